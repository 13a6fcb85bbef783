"""Output KD: the three distances, padding, the weight, the teacher stays frozen."""

from __future__ import annotations

import math

import pytest
import torch

from sekd.config import schema, validate_sections
from sekd.distill import build_distiller
from sekd.distill.output_kd import OutputKD
from sekd.errors import SekdError
from sekd.losses.distill import DISTANCES, SISDR_CAP_DB, get_distance, sisdr_distance
from sekd.losses.sisdr import si_sdr
from sekd.losses.stft import multi_resolution_stft_loss
from sekd.models import build_model
from sekd.models.fast_gru import reference_kernel

CONF = {"hidden": 8, "layers": 1, "n_fft": 128, "hop": 64}


def signals(seed: int = 0, length: int = 8000) -> tuple[torch.Tensor, torch.Tensor]:
    """A harmonic 'speech' batch and a noisy, rescaled copy of it."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 16000
    f0 = 100 + 150 * torch.rand(3, 1, generator=gen)
    clean = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 6)) * 0.1
    other = 0.7 * clean + 0.02 * torch.randn(3, length, generator=gen)
    return clean, other


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_distance_is_zero_for_identical_signals_and_ignores_padding(name):
    distance = get_distance(name)
    clean, other = signals()
    lengths = torch.tensor([8000, 6000, 5000])
    assert abs(float(distance(clean, clean, lengths))) < 1e-6
    assert abs(float(distance(clean, clean, None))) < 1e-6
    assert float(distance(other, clean, lengths)) > 1e-3
    # item 2 alone (5000 samples) equals item 2 padded to 8000 with garbage, given its length
    alone = distance(other[2:, :5000], clean[2:, :5000], None)
    garbage = torch.randn(1, 3000)
    padded = distance(
        torch.cat([other[2:, :5000], garbage], dim=1),
        torch.cat([clean[2:, :5000], -garbage], dim=1),
        torch.tensor([5000]),
    )
    assert float(padded) == pytest.approx(float(alone), rel=1e-5)
    unmasked = distance(
        torch.cat([other[2:, :5000], garbage], dim=1),
        torch.cat([clean[2:, :5000], -garbage], dim=1),
        None,
    )
    assert float(unmasked) != pytest.approx(float(alone), rel=1e-2)


def test_sisdr_distance_is_capped_negative_si_sdr():
    clean, other = signals(1)
    plain = si_sdr(other, clean)  # per item, dB
    tau = 10 ** (-SISDR_CAP_DB / 10)
    expected = (-plain + 10 * torch.log10(1 + tau * 10 ** (plain / 10)) + SISDR_CAP_DB).mean()
    assert float(sisdr_distance(other, clean)) == pytest.approx(float(expected), rel=1e-4)
    # far below the cap it is plain negative SI-SDR shifted by the cap; scale-invariant too
    assert float(sisdr_distance(3 * other, clean)) == pytest.approx(
        float(-plain.mean() + SISDR_CAP_DB), abs=0.05
    )


def reference_mrstft_term(estimate, reference, n_fft, hop, win):
    """Spectral convergence + log-magnitude L1 at one resolution, straight from the definition."""
    window = torch.hann_window(win)
    spec = [
        torch.stft(x, n_fft, hop, win, window, pad_mode="constant", return_complex=True).abs()
        for x in (estimate, reference)
    ]
    est, ref = spec
    convergence = torch.linalg.norm(ref - est, dim=(1, 2)) / torch.linalg.norm(ref, dim=(1, 2))
    log_ratio = ref.clamp_min(1e-7).log() - est.clamp_min(1e-7).log()  # floor as in sekd
    return float(convergence.mean() + log_ratio.abs().mean())


def test_mrstft_is_the_mean_over_resolutions_of_its_definition():
    clean, other = signals(2)
    resolutions = ((512, 128, 512), (256, 50, 200))
    expected = sum(reference_mrstft_term(other, clean, *r) for r in resolutions) / 2
    value = multi_resolution_stft_loss(other, clean, resolutions=resolutions)
    assert float(value) == pytest.approx(expected, rel=1e-4)


def distiller_and_batch(weight: float, distance: str):
    torch.manual_seed(0)
    teacher = build_model("gru_mask", {**CONF, "hidden": 16})
    torch.manual_seed(1)
    student = build_model("gru_mask", CONF)
    clean, noisy = signals(3)
    noisy = noisy + 0.03 * torch.randn_like(noisy)
    batch = {"noisy": noisy, "target": clean, "lengths": torch.tensor([8000, 7000, 4000])}
    cfg = {"weight": weight, "distance": distance}
    return build_distiller("output_kd", teacher, cfg), student, teacher, batch


@pytest.mark.parametrize("distance", sorted(DISTANCES))
def test_weight_scales_the_kd_term_and_only_the_student_learns(distance):
    parts = {}
    for weight in (0.0, 2.5):
        distiller, student, teacher, batch = distiller_and_batch(weight, distance)
        assert isinstance(distiller, OutputKD)
        loss, parts[weight] = distiller(student, batch)
        assert set(parts[weight]) == {"task", "kd", "total"}
        assert float(loss.detach()) == pytest.approx(float(parts[weight]["total"]))
    assert float(parts[0.0]["kd"]) > 0
    assert float(parts[0.0]["kd"]) == pytest.approx(float(parts[2.5]["kd"]))
    assert float(parts[0.0]["total"]) == pytest.approx(float(parts[0.0]["task"]))
    expected = float(parts[2.5]["task"]) + 2.5 * float(parts[2.5]["kd"])
    assert float(parts[2.5]["total"]) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_student_equal_to_teacher_has_zero_kd():
    distiller, _, teacher, batch = distiller_and_batch(1.0, "stft_mag")
    with reference_kernel():  # the same GRU kernel for the trained and the frozen pass: exact
        _, parts = distiller(teacher, batch)
    assert float(parts["kd"]) == 0.0 and float(parts["task"]) != 0.0
    # the fused training GRU (student) against torch's inference kernel (teacher): rounding only
    _, parts = distiller(teacher, batch)
    assert abs(float(parts["kd"])) < 1e-12


def test_every_distance_the_schema_accepts_is_implemented():
    section = schema()["properties"]["distill"]["properties"]["output_kd"]
    assert set(section["properties"]["distance"]["enum"]) == set(DISTANCES)


@pytest.mark.parametrize(
    ("cfg", "key", "why"),
    [
        ({"weight": 1.0, "distance": "l1"}, "distance", "'l1' is not one of"),
        ({"distance": "sisdr"}, "weight", "'weight' is a required property"),
        ({"weight": 1.0, "distance": "sisdr", "lam": 1}, "lam", "'lam' was unexpected"),
        ({"weight": -1.0, "distance": "sisdr"}, "weight", "less than the minimum of 0"),
    ],
)
def test_schema_rejects_bad_output_kd_config_naming_the_key(cfg, key, why):
    with pytest.raises(SekdError, match=rf"invalid key 'distill\.output_kd\.{key}'") as err:
        validate_sections({"distill": {"output_kd": cfg}})
    assert why in str(err.value) and "\n" not in str(err.value)
