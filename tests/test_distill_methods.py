"""Acceptance checks across the distillation methods: DFKD's band assignment on a spectrum with a
known split, and every loss-based method (and MetricGAN-OKD's generator loss) decreasing over a
few optimisation steps on one fixed batch."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import TINY_MODEL

from sekd.distill import build_distiller
from sekd.losses.distill import dfkd_terms, split_bins
from sekd.losses.metricgan import discriminator_loss, generator_loss
from sekd.models import build_model
from sekd.models.metricgan import MetricDiscriminator, discriminator_input

TEACHER_CONF = {**TINY_MODEL["conf"], "hidden": 16}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models step fastest on one thread; two threads on a busy CI box spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def speech_like(batch: int, samples: int, seed: int = 0) -> dict:
    """Harmonic 'speech' + white noise; every other item is zero-padded after 3/4 of its length."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    f0 = 100 + 150 * torch.rand(batch, 1, generator=gen)
    clean = 0.05 * sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 6))
    noisy = clean + 0.02 * torch.randn(batch, samples, generator=gen)
    lengths = torch.full((batch,), samples)
    lengths[::2] = samples * 3 // 4
    keep = torch.arange(samples) < lengths[:, None]
    return {"noisy": noisy * keep, "target": clean * keep, "lengths": lengths}


# ---------------------------------------------------------------- DFKD: which bins are in which band

BINS = 24


def known_split_spectrum(jumps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Complex ``[B, BINS, T]`` with random phases; magnitudes in [1, 1.5) below each frame's jump
    bin and in [10, 15) from it on, so the largest relative rise of the running maximum (>= x6.6,
    every other rise is < x1.5) is from bin ``jump - 1``: the split bin is ``jumps - 1``."""
    gen = torch.Generator().manual_seed(seed)
    shape = (jumps.shape[0], BINS, jumps.shape[1])
    freq = torch.arange(BINS)[None, :, None]
    low = 1 + 0.5 * torch.rand(shape, generator=gen)
    high = 10 + 5 * torch.rand(shape, generator=gen)
    magnitude = torch.where(freq < jumps[:, None, :], low, high)
    return torch.polar(magnitude, 2 * math.pi * torch.rand(shape, generator=gen))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("region", ["above_split", "split_bin", "below_split"])
def test_dfkd_perturbation_reaches_only_the_bands_that_contain_it(region, beta):
    # a different split in every frame and item, never at the spectrum's edges
    jumps = torch.tensor([[3, 7, 12, 20, 5, 16], [9, 4, 18, 6, 21, 11]])
    teacher = known_split_spectrum(jumps)
    split = jumps - 1
    assert torch.equal(split_bins(teacher.abs()), split)
    frames = torch.ones(jumps.shape, dtype=torch.bool)

    freq = torch.arange(BINS)[None, :, None]
    where = {
        "above_split": freq > split[:, None, :],  # strictly above: in the high band only
        "split_bin": freq == split[:, None, :],  # the split bin belongs to both bands
        "below_split": freq < split[:, None, :],  # strictly below: in the low band only
    }[region]
    gen = torch.Generator().manual_seed(1)
    noise = torch.complex(*torch.randn(2, *teacher.shape, generator=gen)) * 8.0
    student = teacher + noise * where
    assert torch.equal(student[~where.expand_as(student)], teacher[~where.expand_as(teacher)])

    low_same, high_same, split_same = dfkd_terms(teacher.clone(), teacher, frames, beta)
    low, high, split_used = dfkd_terms(student, teacher, frames, beta)
    assert torch.equal(split_same, split) and torch.equal(split_used, split)  # teacher-only split
    # identical spectra: both terms vanish up to the cosine's eps (band energies are >= 1 here)
    assert abs(float(low_same)) < 1e-6 and abs(float(high_same)) < 1e-6

    grows_low = region in ("split_bin", "below_split")
    grows_high = region in ("split_bin", "above_split")
    if grows_low:
        assert float(low) > float(low_same) + 1e-2
    else:  # a high-band-only perturbation leaves the low-band term numerically unchanged
        assert float(low) == pytest.approx(float(low_same), abs=1e-7)
    if grows_high:
        assert float(high) > float(high_same) + 1e-2
    else:
        assert float(high) == pytest.approx(float(high_same), abs=1e-7)


def test_dfkd_high_band_perturbation_grows_both_high_band_parts():
    """Strictly above the split, the cosine part (beta = 1) and the magnitude L2 (beta = 0) grow."""
    jumps = torch.tensor([[4, 8, 13, 19]])
    teacher = known_split_spectrum(jumps, seed=3)
    freq = torch.arange(BINS)[None, :, None]
    above = freq > (jumps - 1)[:, None, :]
    # a phase rotation keeps magnitudes (L2 part 0); a gain keeps angles (cosine part ~0)
    rotated = torch.where(
        above, teacher * torch.polar(torch.tensor(1.0), torch.tensor(2.0)), teacher
    )
    scaled = torch.where(above, 3 * teacher, teacher)
    frames = torch.ones(jumps.shape, dtype=torch.bool)
    for student in (rotated, scaled):
        low_cosine, cosine, _ = dfkd_terms(student, teacher, frames, beta=1.0)
        low_l2, l2, _ = dfkd_terms(student, teacher, frames, beta=0.0)
        assert abs(float(low_cosine)) < 1e-6 and abs(float(low_l2)) < 1e-6
        if student is rotated:
            assert float(cosine) > 0.05 and abs(float(l2)) < 1e-6
        else:
            # only the unscaled split bin (also in the high band) bends the high band's direction
            assert abs(float(cosine)) < 1e-3 and float(l2) > 1.0


# ---------------------------------------------------------------- every loss decreases

# (method, cfg, components that must decrease). Weights make the distillation term a sizable
# part of the total, so a distillation term that cannot be optimised (sign, gradient, detach
# errors) fails even though the task loss alone would lower the total.
DECREASE_CASES = {
    "output_kd-sisdr": ("output_kd", {"weight": 1.0, "distance": "sisdr"}, ("kd",)),
    "output_kd-stft_mag": ("output_kd", {"weight": 1e4, "distance": "stft_mag"}, ("kd",)),
    "output_kd-mrstft": ("output_kd", {"weight": 30.0, "distance": "mrstft"}, ("kd",)),
    "dfkd": (
        "dfkd",
        {"weight": 3000.0, "beta": 0.5, "split_from": "teacher", "n_fft": 128, "hop": 32},
        ("kd",),
    ),
    "latent_mixup-teacher_student": (
        "latent_mixup",
        {"variant": "teacher_student", "alpha": 0.4, "beta1": 1.0, "beta2": 0.0, "gamma": 0.0},
        ("mix",),
    ),
    "latent_mixup-teacher_student-feat": (
        "latent_mixup",
        {"variant": "teacher_student", "alpha": 0.4, "beta1": 1.0, "beta2": 10.0, "gamma": 0.0},
        ("feat",),
    ),
    "latent_mixup-manifold": (
        "latent_mixup",
        {"variant": "manifold", "alpha": 0.4, "beta1": 0.0, "beta2": 10.0, "gamma": 1.0},
        ("feat", "mix"),
    ),
    "latent_mixup-feature_mse": (
        "latent_mixup",
        {"variant": "feature_mse", "alpha": 0.4, "beta1": 0.0, "beta2": 10.0, "gamma": 0.0},
        ("feat",),
    ),
}
STEPS, LR = 25, 1e-2
DB_COMPONENTS = ("total", "mix")  # in dB (negative SI-SDR), possibly negative: an absolute drop


@pytest.mark.parametrize("case", list(DECREASE_CASES))
def test_loss_decreases_over_a_few_steps_on_a_fixed_batch(case):
    method, cfg, decreasing = DECREASE_CASES[case]
    torch.manual_seed(0)
    teacher = build_model("gru_mask", TEACHER_CONF)
    torch.manual_seed(1)
    student = build_model(TINY_MODEL["name"], TINY_MODEL["conf"])
    distiller = build_distiller(method, teacher, cfg).train()
    batch = speech_like(4, 4000)

    def evaluate() -> dict:
        torch.manual_seed(123)  # the same mixing weights and partners before and after training
        with torch.no_grad():
            return {k: float(v) for k, v in distiller(student, batch)[1].items()}

    first = evaluate()  # also builds a lazy adapter before the optimiser sees the parameters
    params = [*student.parameters(), *(p for p in distiller.parameters() if p.requires_grad)]
    optimiser = torch.optim.Adam(params, lr=LR)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(7)
    for _ in range(STEPS):
        loss, _ = distiller(student, batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    last = evaluate()

    assert all(math.isfinite(v) for v in last.values()), last
    assert last["total"] < first["total"] - 1.0, (first, last)
    for key in decreasing:
        if key in DB_COMPONENTS:
            assert last[key] < first[key] - 0.5, (key, first, last)
        else:
            assert first[key] > 0 and last[key] < 0.7 * first[key], (key, first, last)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())


# ---------------------------------------------------------------- MetricGAN-OKD generator loss

GEN_CONF = {"hidden": 8, "layers": 1, "n_fft": 32, "hop": 16, "min_mask": 0.05}


def test_okd_generator_losses_decrease_against_a_fixed_discriminator():
    """Two generators stepped as in the generator phase (peers computed first, with gradients
    stopped) lower their L_G against a discriminator that rates clean above noisy and is frozen."""
    gens = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        gens.append(build_model("metricgan_gru", GEN_CONF))
    batch = speech_like(1, 1600, seed=2)
    noisy = gens[0].spectrogram(batch["noisy"])
    clean = gens[0].spectrogram(batch["target"])

    torch.manual_seed(3)
    disc = MetricDiscriminator(2)
    d_optimiser = torch.optim.Adam(disc.parameters(), lr=1e-3)
    for _ in range(20):  # a D that scores clean ~1 and noisy lower: something to climb
        for test, targets in ((clean, torch.ones(1, 2)), (noisy, torch.tensor([[0.2, 0.4]]))):
            d_optimiser.zero_grad(set_to_none=True)
            discriminator_loss(disc, clean, test, targets).backward()
            d_optimiser.step()
    disc.zero_grad(set_to_none=True)
    disc.requires_grad_(False)  # as in the generator phase: D is read, never stepped
    with torch.no_grad():
        scores = disc(
            torch.cat([discriminator_input(clean, clean), discriminator_input(clean, noisy)])
        )
    assert (scores[0] > scores[1] + 0.2).all()  # the discriminator does separate them

    def losses() -> list[tuple[float, float, float]]:
        with torch.no_grad():
            outs = [g.enhance_features(noisy) for g in gens]
            return [
                tuple(
                    float(v)
                    for v in generator_loss(disc, i, clean, outs[i], outs[:i] + outs[i + 1 :], 5.0)
                )
                for i in range(len(gens))
            ]

    first = losses()
    optimisers = [torch.optim.Adam(g.parameters(), lr=1e-2) for g in gens]
    for _ in range(15):
        with torch.no_grad():
            peers = [g.enhance_features(noisy) for g in gens]
        for i, (gen, optimiser) in enumerate(zip(gens, optimisers, strict=True)):
            loss, *_ = generator_loss(
                disc, i, clean, gen.enhance_features(noisy), peers[:i] + peers[i + 1 :], 5.0
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    last = losses()
    assert all(p.grad is None for p in disc.parameters())
    for (total0, adv0, _), (total1, adv1, _) in zip(first, last, strict=True):
        assert total1 < 0.6 * total0, (first, last)
        assert adv1 < 0.6 * adv0, (first, last)
