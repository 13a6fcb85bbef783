"""Latent-mixup KD: exact encode/decode split, the three variants' gradients, λ = 1, FitNets zero,
padding masks, framing errors, and a real training run that resumes with the adapter restored."""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import TINY_MODEL, tiny_train, write_tiny_set

from sekd.config import schema, validate_sections
from sekd.distill import build_distiller
from sekd.distill.latent_mixup import FitNetsKD, LatentMixupKD, frame_mask, masked_mse, mix
from sekd.engine import CHECKPOINT, KILL_ENV, train_model
from sekd.errors import SekdError
from sekd.losses.sisdr import neg_si_sdr
from sekd.models import build_model
from sekd.models.fast_gru import reference_kernel
from sekd.models.store import save_model

GRU = {"layers": 1, "n_fft": 128, "hop": 64}
TASNET = {"N": 16, "L": 8, "H": 16, "P": 3, "X": 2, "R": 1}
CFG = {"variant": "teacher_student", "alpha": 0.4, "beta1": 1.0, "beta2": 1.0, "gamma": 1.0}
SECTION = schema()["properties"]["distill"]["properties"]["latent_mixup"]
VARIANTS = tuple(SECTION["properties"]["variant"]["enum"])  # every variant the schema accepts


def gru(hidden: int, **conf) -> torch.nn.Module:
    return build_model("gru_mask", {**GRU, "hidden": hidden, **conf})


def speech_like(batch: int, samples: int, seed: int = 0) -> dict:
    """Harmonic 'speech' + noise with per-item lengths; samples past each length are zero."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    f0 = 100 + 150 * torch.rand(batch, 1, generator=gen)
    clean = sum(torch.sin(2 * torch.pi * f0 * k * t) / k for k in range(1, 6)) * 0.05
    noisy = clean + 0.02 * torch.randn(batch, samples, generator=gen)
    lengths = torch.full((batch,), samples)
    lengths[::2] = samples * 3 // 4
    keep = torch.arange(samples) < lengths[:, None]
    return {"noisy": noisy * keep, "target": clean * keep, "lengths": lengths}


@pytest.mark.parametrize(
    ("name", "conf"), [("gru_mask", {**GRU, "hidden": 8}), ("convtasnet", {**TASNET, "B": 8})]
)
def test_encode_decode_split_is_exact_and_frames_are_counted(name, conf):
    torch.manual_seed(0)
    model = build_model(name, conf).eval()
    wave = torch.randn(3, 4001)
    latent, context = model.encode(wave)
    assert torch.equal(model.decode(latent, context), model(wave))
    assert torch.equal(latent, model(wave, return_latent=True)[1])
    for length in (4001, 3000, 2817):  # frame counts of the unpadded signals
        frames = model.encode(wave[:, :length])[0].shape[model.latent_time_axis]
        assert int(model.num_frames(torch.tensor(length))) == frames


def teacher_student_pair(kind: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    if kind == "gru_mask":
        return gru(24), gru(8)
    return build_model("convtasnet", {**TASNET, "B": 12}), build_model(
        "convtasnet", {**TASNET, "B": 6}
    )


@pytest.mark.parametrize("kind", ["gru_mask", "convtasnet"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_backpropagate_into_student_and_adapter_not_teacher(variant, kind):
    teacher, student = teacher_student_pair(kind)
    before = copy.deepcopy(teacher.state_dict())
    cfg = {**CFG, "variant": variant, "beta1": 0.5, "beta2": 2.0, "gamma": 0.3}
    kd = LatentMixupKD(teacher, cfg)  # lazy adapter, as build_distiller makes it
    batch = speech_like(4, 4000)
    neg_si_sdr(student(batch["noisy"]), batch["target"]).backward()
    used = [
        n for n, p in student.named_parameters() if p.grad is not None
    ]  # not Tas' last residual
    student.zero_grad(set_to_none=True)
    loss, parts = kd(student, batch)
    assert torch.isfinite(loss)
    loss.backward()
    expected = {"task", "feat", "total", "si_sdr"} | (
        {"mix"} if variant != "feature_mse" else set()
    )
    assert set(parts) == expected
    weight = {"teacher_student": cfg["beta1"], "manifold": cfg["gamma"]}.get(variant, 0.0)
    combined = parts["task"] + cfg["beta2"] * parts["feat"] + weight * parts.get("mix", 0.0)
    assert float(parts["total"]) == pytest.approx(float(combined), rel=1e-6)
    assert float(parts["feat"]) > 0
    params = dict(student.named_parameters())
    for name, param in [*((n, params[n]) for n in used), *kd.adapter.named_parameters()]:
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert kd.adapter.weight.grad.abs().sum() > 0
    assert kd.adapter.weight.shape == (teacher.latent_dim, student.latent_dim)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert not any(k.startswith("teacher.") for k in kd.state_dict())


class UnitLambda(LatentMixupKD):
    """λ forced to 1: the mixed latent is the teacher's own."""

    def sample_lambda(self, batch: int) -> torch.Tensor:
        return torch.ones(batch)


def test_unit_lambda_reduces_the_mixed_decode_to_the_teacher_output():
    teacher, student = teacher_student_pair("gru_mask")
    batch = speech_like(4, 4000, seed=1)
    kd = UnitLambda(teacher.eval(), CFG, student=student)
    with torch.no_grad():
        teacher_out = teacher(batch["noisy"])
        h_t, context = kd.encode(teacher, batch["noisy"])
        h_s, _ = kd.encode(student, batch["noisy"])
        projected = kd.adapter(h_s)
        unit = kd.decode(teacher, mix(h_t, projected, torch.ones(4, 1, 1)), context)
        zero = kd.decode(teacher, mix(h_t, projected, torch.zeros(4, 1, 1)), context)
    assert torch.allclose(unit, teacher_out, atol=1e-5)
    assert not torch.allclose(zero, teacher_out, atol=1e-3)  # λ does matter
    _, parts = kd(student, batch)
    own = neg_si_sdr(teacher_out, batch["target"])
    assert float(parts["mix"]) == pytest.approx(float(own), abs=1e-5)


class ZeroLambda(LatentMixupKD):
    """λ forced to 0: the mixed latent is the adapted student latent alone."""

    def sample_lambda(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch)


def test_zero_lambda_reduces_the_mixed_decode_to_the_adapted_student_path():
    teacher, student = teacher_student_pair("gru_mask")
    batch = speech_like(4, 4000, seed=1)
    cfg = {**CFG, "beta1": 1.0, "beta2": 0.0}  # only the mixed decode reaches the adapter
    kd = ZeroLambda(teacher.eval(), cfg, student=student)
    noisy, target = batch["noisy"], batch["target"]

    def adapted_path() -> torch.Tensor:
        """Task loss of the frozen teacher decoder on P(h_S), with the teacher's noisy context."""
        h_s, _ = kd.encode(student, noisy)
        return neg_si_sdr(kd.decode(teacher, kd.adapter(h_s), teacher.context(noisy)), target)

    expected = adapted_path()
    _, parts = kd(student, batch)
    assert float(parts["mix"]) == pytest.approx(float(expected.detach()), abs=1e-5)
    with torch.no_grad():  # λ = 1 gives the teacher's own output (test above): λ does matter
        own = neg_si_sdr(teacher(noisy), target)
    assert abs(float(parts["mix"]) - float(own)) > 0.1
    # the gradient into the adapter is that of the adapted path alone (h_T carries no weight)
    grads = torch.autograd.grad(expected, list(kd.adapter.parameters()))
    loss, _ = kd(student, batch)
    loss.backward()
    for param, grad in zip(kd.adapter.parameters(), grads, strict=True):
        assert grad.abs().sum() > 0
        assert torch.allclose(param.grad, grad, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- split depth and student decoder


def two_layer_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return gru(24, layers=2), gru(8, layers=2)


def grads_of(loss: torch.Tensor, model: torch.nn.Module) -> set[str]:
    """Names of ``model``'s parameters that ``loss`` depends on."""
    names, params = zip(
        *[(n, p) for n, p in model.named_parameters() if p.requires_grad], strict=True
    )
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return {n for n, g in zip(names, grads, strict=True) if g is not None and g.abs().sum() > 0}


def test_split_after_gru_layer_1_leaves_a_gru_layer_in_the_decoder():
    model = gru(8, layers=2).eval()
    assert model.split_layers == 2
    wave = torch.randn(3, 4001)
    latent, context = model.encode(wave, split=1)
    # the encoder is GRU layer 1 alone: a one-layer GRU with layer 1's weights gives its latent
    first = torch.nn.GRU(model.bins, 8, num_layers=1, batch_first=True)
    first.load_state_dict({k: v for k, v in model.gru.state_dict().items() if k.endswith("_l0")})
    with reference_kernel():  # torch's own GRU kernel: exactly the one-layer GRU
        reference = model.encode(wave, split=1)[0]
    assert torch.equal(reference, first(model.features(context.spec))[0])
    torch.testing.assert_close(latent, reference, rtol=0, atol=1e-6)  # the fused training GRU
    assert not torch.allclose(latent, model.encode(wave)[0])  # not the stack's output
    # ...and the decoder still runs GRU layer 2 before the mask head: the split is exact
    assert torch.equal(model.decode(latent, context, split=1), model(wave))
    assert not torch.allclose(model.decode(latent, context), model(wave))  # head alone differs
    latent = latent.detach().requires_grad_(True)
    decoder = grads_of(model.decode(latent, context, split=1).pow(2).sum(), model)
    assert decoder == {f"gru.{w}_{m}_l1" for w in ("weight", "bias") for m in ("ih", "hh")} | {
        "proj.weight",
        "proj.bias",
    }
    encoder = grads_of(model.encode(wave, split=1)[0].pow(2).sum(), model)
    assert encoder == {f"gru.{w}_{m}_l0" for w in ("weight", "bias") for m in ("ih", "hh")}
    # the distiller splits both models there (the teacher follows split_layer by default)
    teacher, student = two_layer_pair()
    kd = LatentMixupKD(teacher, {**CFG, "split_layer": 1}, student=student)
    assert kd.teacher_split == 1
    assert torch.equal(kd.teacher_latent_of(wave), teacher.encode(wave, split=1)[0])
    assert (
        LatentMixupKD(teacher, {**CFG, "split_layer": 1, "teacher_split_layer": 2}).teacher_split
        == 2
    )


def test_split_depth_errors_name_the_key():
    teacher, student = two_layer_pair()
    with pytest.raises(SekdError, match=r"latent_mixup\.split_layer: 3 is past the teacher's 2"):
        LatentMixupKD(teacher, {**CFG, "split_layer": 3})
    one_layer = gru(8)
    with pytest.raises(SekdError, match=r"latent_mixup\.split_layer: 2 is past the student's 1"):
        LatentMixupKD(teacher, {**CFG, "split_layer": 2}, student=one_layer)
    with pytest.raises(SekdError, match=r"latent_mixup\.split_layer: 2 is past the student's 1"):
        LatentMixupKD(teacher, {**CFG, "split_layer": 2})(one_layer, speech_like(2, 2000))
    with pytest.raises(SekdError, match=r"teacher_split_layer: 5 is past the teacher's 2"):
        LatentMixupKD(teacher, {**CFG, "teacher_split_layer": 5})
    tasnet = build_model("convtasnet", {**TASNET, "B": 4})
    with pytest.raises(
        SekdError, match=r"split_layer: teacher\.model\.name: ConvTasNet has no GRU"
    ):
        LatentMixupKD(tasnet, {**CFG, "split_layer": 1})


def test_fitnets_is_the_feature_mse_variant_as_a_method_of_its_own():
    """The latent-mixup setting's FitNets baseline: its own name and section, the same loss as
    latent mixup's feature_mse variant at the same split, and errors that name its section."""
    teacher, student = two_layer_pair()
    batch = speech_like(2, 4000)
    fitnets = build_distiller("fitnets", teacher, {"beta2": 2.0, "split_layer": 1})
    assert isinstance(fitnets, FitNetsKD) and fitnets.name == "fitnets"
    torch.manual_seed(3)
    loss, parts = fitnets(student, batch)
    reference = LatentMixupKD(
        teacher, {**CFG, "variant": "feature_mse", "beta2": 2.0, "split_layer": 1}
    )
    reference.adapter = copy.deepcopy(fitnets.adapter)
    torch.manual_seed(3)
    expected, expected_parts = reference(student, batch)
    assert torch.equal(loss, expected) and parts.keys() == expected_parts.keys()
    with pytest.raises(SekdError, match=r"distill\.fitnets\.split_layer: 3 is past the teacher's"):
        FitNetsKD(teacher, {"beta2": 1.0, "split_layer": 3})


@pytest.mark.parametrize("variant", VARIANTS)
def test_defaults_reproduce_the_whole_stack_split_exactly(variant):
    """No split keys = split after every GRU layer, bit for bit, and = the previous formula."""
    teacher, student = two_layer_pair()
    batch = speech_like(4, 4000, seed=2)
    cfg = {**CFG, "variant": variant}
    explicit = {**cfg, "split_layer": 2, "teacher_split_layer": 2, "decoder": "teacher"}
    losses = []
    for config in (cfg, explicit):
        torch.manual_seed(3)
        kd = LatentMixupKD(teacher, config, student=student)
        torch.manual_seed(4)
        losses.append(kd(student, batch))
    assert torch.equal(losses[0][0], losses[1][0])
    assert all(torch.equal(losses[0][1][k], losses[1][1][k]) for k in losses[0][1])
    if variant != "teacher_student":
        return
    # the previous code's computation, written out: encode/decode after the whole stack
    torch.manual_seed(3)
    kd = LatentMixupKD(teacher, cfg, student=student)
    noisy, target = batch["noisy"], batch["target"]
    torch.manual_seed(4)
    h_s, context = student.encode(noisy)
    task = neg_si_sdr(student.decode(h_s, context), target)
    with torch.no_grad():
        h_t = teacher.encode(noisy)[0]
    projected = kd.adapter(h_s)
    feat = masked_mse(projected, h_t, frame_mask(student, batch["lengths"], *h_s.shape[:2], "cpu"))
    alpha = torch.tensor(0.4)
    lam = torch.distributions.Beta(alpha, alpha).sample((4,))[:, None, None]
    mixed = neg_si_sdr(teacher.decode(mix(h_t, projected, lam), teacher.context(noisy)), target)
    assert torch.equal(losses[0][0], task + feat + mixed)


def test_student_decoder_variant_trains_a_step_and_differs_from_the_teacher_decoder():
    teacher, student = two_layer_pair()
    batch = speech_like(4, 4000, seed=1)
    cfg = {**CFG, "split_layer": 1, "beta2": 0.0}  # only the mixed decode reaches the adapters
    results = {}
    for decoder in ("teacher", "student"):
        model = copy.deepcopy(student)
        kd = LatentMixupKD(teacher, {**cfg, "decoder": decoder})  # lazy adapters
        torch.manual_seed(5)
        loss, parts = kd(model, batch)
        results[decoder] = (float(loss.detach()), parts, kd, model, loss)
    assert results["teacher"][0] != pytest.approx(results["student"][0], abs=1e-3)
    assert float(results["teacher"][1]["task"]) == float(results["student"][1]["task"])
    _, parts, kd, model, loss = results["student"]
    assert kd.back.weight.shape == (student.latent_dim, teacher.latent_dim)
    assert set(kd.state_dict()) == {"adapter.weight", "adapter.bias", "back.weight", "back.bias"}
    # the mixed term trains the student's decoder (GRU layer 2 + head) and encoder, and Q
    task_only = neg_si_sdr(model(batch["noisy"]), batch["target"])
    for name, param in model.named_parameters():
        if name.endswith(("_l0", "_l1")) or name.startswith("proj."):
            both = torch.autograd.grad(loss, param, retain_graph=True)[0]
            alone = torch.autograd.grad(task_only, param, retain_graph=True)[0]
            assert not torch.allclose(both, alone), name
    assert grads_of(loss, kd) == {"back.weight", "back.bias"}  # β2 = 0: P is idle
    # one optimiser step on student + adapters lowers nothing to NaN and changes Q
    params = [*model.parameters(), *kd.parameters()]
    params = [p for p in params if p.requires_grad]
    before = kd.back.weight.detach().clone()
    opt = torch.optim.Adam(params, lr=1e-2)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert not torch.equal(before, kd.back.weight) and torch.isfinite(kd.back.weight).all()
    assert torch.isfinite(kd(model, batch)[0])
    assert all(p.grad is None for p in teacher.parameters())


def test_student_decoder_with_zero_lambda_is_the_student_itself():
    teacher, student = two_layer_pair()
    batch = speech_like(4, 4000, seed=1)
    cfg = {**CFG, "decoder": "student", "split_layer": 1}
    kd = ZeroLambda(teacher, cfg, student=student)
    _, parts = kd(student, batch)
    assert float(parts["mix"]) == pytest.approx(float(parts["task"]), abs=1e-6)


class Utterances:
    ids = ["a", "b"]
    noisy = [np.random.default_rng(0).standard_normal(3000).astype(np.float32)] * 2


def test_a_cache_of_another_split_depth_is_rebuilt():
    teacher, _ = two_layer_pair()
    whole = LatentMixupKD(teacher, CFG)
    whole.prepare(Utterances(), torch.device("cpu"))
    split = LatentMixupKD(teacher, {**CFG, "split_layer": 1})
    split.cache = whole.cache  # as a tuning worker shares it between trials
    split.prepare(Utterances(), torch.device("cpu"))
    assert split.cache is not whole.cache and split.cache.split == 1
    wave = torch.from_numpy(Utterances.noisy[0])[None]
    assert torch.allclose(split.cache.tensors[0], teacher.encode(wave, split=1)[0][0], atol=1e-6)
    again = LatentMixupKD(teacher, CFG)
    again.cache = whole.cache
    again.prepare(Utterances(), torch.device("cpu"))
    assert again.cache is whole.cache


def test_feature_mse_vanishes_when_the_adapter_maps_student_to_teacher_exactly():
    torch.manual_seed(0)
    teacher = gru(8)
    student = copy.deepcopy(teacher)  # same latent as the teacher...
    kd = LatentMixupKD(teacher, {**CFG, "variant": "feature_mse"}, student=student)
    with torch.no_grad():  # ...and P = identity
        kd.adapter.weight.copy_(torch.eye(8))
        kd.adapter.bias.zero_()
    batch = speech_like(4, 4000)
    loss, parts = kd(student, batch)
    assert float(parts["feat"]) < 1e-12
    assert float(loss.detach()) == pytest.approx(float(parts["task"]), abs=1e-9)
    with torch.no_grad():
        kd.adapter.bias.fill_(0.1)
    assert float(kd(student, batch)[1]["feat"]) == pytest.approx(0.01, rel=1e-5)


def test_padding_frames_are_masked_out():
    model = gru(4)
    lengths = torch.tensor([4000, 3000, 64])
    mask = frame_mask(model, lengths, 3, 4000 // 64 + 1, "cpu")
    assert mask.sum(1).tolist() == [63, 47, 2]
    estimate, target = torch.randn(3, 63, 5), torch.randn(3, 63, 5)
    padded = torch.where(mask[..., None], target, target + 100.0)  # differs only in padding
    assert float(masked_mse(estimate, padded, mask)) == pytest.approx(
        float(masked_mse(estimate, target, mask)), rel=1e-6
    )
    diff = (estimate - target).pow(2)[mask].mean()
    assert float(masked_mse(estimate, target, mask)) == pytest.approx(float(diff), rel=1e-6)


def test_framing_errors_name_the_culprit():
    teacher = gru(16)
    other = gru(8, n_fft=256)
    conf = r"teacher\.model\.conf .* student\.model\.conf"
    with pytest.raises(SekdError, match=conf):
        LatentMixupKD(teacher, CFG, student=other)
    with pytest.raises(SekdError, match=conf):  # the lazy path checks at the first batch
        LatentMixupKD(teacher, CFG)(other, speech_like(2, 2000))
    tasnet = build_model("convtasnet", {**TASNET, "B": 4})
    with pytest.raises(SekdError, match=conf):
        LatentMixupKD(teacher, CFG, student=tasnet)
    with pytest.raises(SekdError, match="student.model.name: Linear has no 'encode'"):
        LatentMixupKD(teacher, CFG, student=torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("change", "key", "why"),
    [
        ({"variant": None}, "variant", "'variant' is a required property"),
        ({"gama": 1}, "gama", "'gama' was unexpected"),
        ({"variant": "cutmix"}, "variant", "'cutmix' is not one of"),
        ({"consistency": "l1"}, "consistency", "'l1' is not one of"),
        ({"alpha": 0}, "alpha", "less than or equal to the minimum of 0"),
        ({"beta1": -1}, "beta1", "less than the minimum of 0"),
        ({"beta2": -1}, "beta2", "less than the minimum of 0"),
        ({"gamma": -1}, "gamma", "less than the minimum of 0"),
        ({"split_layer": 0}, "split_layer", "less than the minimum of 1"),
        ({"teacher_split_layer": 1.5}, "teacher_split_layer", "is not of type 'integer'"),
        ({"decoder": "both"}, "decoder", "'both' is not one of"),
        (
            {"variant": "manifold", "decoder": "student"},
            "variant",
            "'teacher_student' was expected",
        ),
    ],
)
def test_schema_rejects_bad_latent_mixup_config_naming_the_key(change, key, why):
    cfg = {k: v for k, v in {**CFG, **change}.items() if v is not None}
    assert validate_sections({"distill": {"latent_mixup": {**CFG, "consistency": "mse"}}})
    with pytest.raises(SekdError, match=rf"invalid key 'distill\.latent_mixup\.{key}'") as err:
        validate_sections({"distill": {"latent_mixup": cfg}})
    assert why in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- a real training run


MODEL = TINY_MODEL
TRAIN = tiny_train(epochs=3)


RUN_SCRIPT = """
import json, sys
from sekd.distill.latent_mixup import LatentMixupKD
from sekd.models.store import load_model
from sekd.engine import train_model
args = json.loads(sys.argv[1])
loss_fn = LatentMixupKD(load_model(args.pop("teacher_dir")), args.pop("cfg"))
train_model(**args, loss_fn=loss_fn)
"""


def test_train_model_with_latent_mixup_resumes_with_the_adapter_restored(tmp_path, caplog):
    train = write_tiny_set(tmp_path, "train", 8, 0.5, seed=0)
    valid = write_tiny_set(tmp_path, "valid", 2, 0.5, seed=1)
    torch.manual_seed(1)
    teacher_cfg = {"name": "gru_mask", "conf": {**MODEL["conf"], "hidden": 24}}
    teacher = build_model(teacher_cfg["name"], teacher_cfg["conf"])
    save_model(tmp_path / "teacher", teacher, teacher_cfg)
    common = {"model_cfg": MODEL, "train_cfg": TRAIN, "train_manifest": str(train)}
    common.update(valid_manifest=str(valid), threads=1, extra_hash=CFG)

    reference = train_model(
        **common,
        out_dir=tmp_path / "ref",
        checkpoint_dir=tmp_path / "ref_ckpt",
        loss_fn=LatentMixupKD(teacher, CFG),
    )
    ref_state = torch.load(tmp_path / "ref_ckpt" / CHECKPOINT, weights_only=True)
    assert set(ref_state["loss_fn"]) == {"adapter.weight", "adapter.bias"}
    history = pd.read_csv(tmp_path / "ref" / "history.csv")
    assert {"train_task", "train_feat", "train_mix", "train_total"} <= set(history.columns)
    assert np.isfinite(reference["best_valid_si_sdr"])

    args = {**common, "out_dir": str(tmp_path / "out"), "checkpoint_dir": str(tmp_path / "ckpt")}
    args.update(teacher_dir=str(tmp_path / "teacher"), cfg=CFG)
    proc = subprocess.run(
        [sys.executable, "-c", RUN_SCRIPT, json.dumps(args)],
        env={**os.environ, KILL_ENV: "1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr
    killed = torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)
    assert killed["epoch"] == 1

    fresh = LatentMixupKD(teacher, CFG)  # adapter not even built yet: the checkpoint fills it
    with caplog.at_level(logging.INFO, logger="sekd.engine"):
        resumed = train_model(
            **common, out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", loss_fn=fresh
        )
    assert "resumed after epoch 1" in caplog.text
    final = torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)
    for key, value in ref_state["loss_fn"].items():  # the same adapter as the uninterrupted run
        assert torch.equal(value, final["loss_fn"][key]), key
        assert torch.equal(value, fresh.state_dict()[key]), key
        assert not torch.equal(value, killed["loss_fn"][key]), key  # and it kept training
    for key, value in ref_state["model"].items():
        assert torch.equal(value, final["model"][key]), key
    assert resumed["best_valid_si_sdr"] == reference["best_valid_si_sdr"]
