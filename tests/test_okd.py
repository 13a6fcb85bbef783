"""MetricGAN-OKD / MetricGAN+: generator and discriminator, losses, scoring pool, schedule, resume."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tiny import write_set

from sekd.config import load_params, validate_params
from sekd.distill.okd import okd_config, train_okd
from sekd.distill.okd_history import Entry, d_inputs
from sekd.engine import CHECKPOINT, KILL_ENV
from sekd.errors import SekdError
from sekd.losses.metricgan import generator_loss
from sekd.metrics.pesq_metric import pesq_score
from sekd.metrics.targets import (
    normalize_composite,
    normalize_pesq,
    normalize_score,
    raw_scores,
    score_job,
)
from sekd.models import build_model
from sekd.models.complexity import count_parameters
from sekd.models.metricgan import MetricDiscriminator, MetricGANGRU, discriminator_input
from sekd.models.store import load_model, save_model
from sekd.parallel import WorkerPool

STUDENT = {"name": "gru_mask", "conf": {"hidden": 8, "layers": 1, "n_fft": 32, "hop": 16}}
OKD = {
    "metrics": ["pesq", "csig"],
    "alpha": 5.0,
    "epochs": 2,
    "samples_per_epoch": 4,
    "hist_portion": 0.5,
    "lr": 5e-4,
    "grad_clip": 5.0,
    "min_mask": 0.05,
    "segment_seconds": 0.3,
}
BINS = 17  # n_fft 32: the fewest bins the discriminator accepts
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions run fastest on one thread; two threads on a busy CI box spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_generator(seed: int = 0, **conf) -> MetricGANGRU:
    torch.manual_seed(seed)
    return build_model("metricgan_gru", {**STUDENT["conf"], **conf})


# ---------------------------------------------------------------- models


def test_generator_shapes_mask_range_and_parameter_count(tmp_path):
    gen = tiny_generator(min_mask=0.05)
    base = build_model("gru_mask", STUDENT["conf"])
    assert count_parameters(gen) == count_parameters(base) + BINS  # one sigmoid slope per bin
    assert torch.equal(gen.activation.slope, torch.ones(BINS))
    wave = 0.1 * torch.randn(2, 4000)
    assert gen(wave).shape == wave.shape
    features = gen.spectrogram(wave)
    assert features.shape == (2, 4000 // 16 + 1, BINS)
    enhanced = gen.enhance_features(features)
    ratio = enhanced[features > 0] / features[features > 0]
    assert ratio.min() >= 0.05 - 1e-6 and ratio.max() <= 1.2 + 1e-6  # clamp(1.2 sigmoid) * log1p
    # the waveform path is expm1 of the masked log1p magnitude with the noisy phase
    spec = gen.context(wave).spec
    rebuilt = gen.istft(
        torch.polar(torch.expm1(enhanced).transpose(1, 2), spec.angle()), wave.shape[-1]
    )
    assert torch.allclose(gen(wave), rebuilt, atol=1e-6)
    save_model(tmp_path / "g", gen, {"name": "metricgan_gru", "conf": STUDENT["conf"]})
    assert torch.allclose(load_model(tmp_path / "g")(wave), gen.eval()(wave), atol=1e-6)
    with pytest.raises(SekdError, match="feature"):
        tiny_generator(feature="magnitude")


def test_discriminator_shapes_parameter_count_and_spectral_norm():
    disc = MetricDiscriminator(num_metrics=2)
    convs = 2 * 16 * 25 + 16 + 16 * 32 * 25 + 32 + 32 * 64 * 25 + 64 + 64 * 128 * 25 + 128
    fcs = 128 * 50 + 50 + 50 * 10 + 10 + 10 * 2 + 2
    assert count_parameters(disc) == convs + fcs + 4  # + BatchNorm2d(2) affine
    assert count_parameters(MetricDiscriminator(3)) - count_parameters(disc) == 11
    assert disc.norm.momentum == 0.01 and disc.norm.num_features == 2
    assert disc(torch.randn(3, 2, 40, BINS)).shape == (3, 2)
    for _ in range(30):  # power iterations converge: every weight has spectral norm ~1
        disc(torch.randn(1, 2, 20, 20))
    for layer in [*disc.convs, *disc.fcs]:
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert abs(float(sigma) - 1.0) < 0.05
    with pytest.raises(SekdError, match="at least 17"):
        disc(torch.randn(1, 2, 16, BINS))


def test_bfloat16_discriminator_runs_its_layers_in_bfloat16_and_stays_close():
    torch.manual_seed(0)
    exact = MetricDiscriminator(2)
    fast = MetricDiscriminator(2, "bfloat16")
    fast.load_state_dict(exact.state_dict())  # same weights and power-iteration vectors
    seen, layouts = [], []
    for disc in (exact, fast):
        disc.convs[-1].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        disc.convs[0].register_forward_hook(
            lambda _m, inputs, _o: layouts.append(
                inputs[0].is_contiguous(memory_format=torch.channels_last)
            )
        )
    pair = 3 * torch.rand(1, 2, 40, BINS)
    test = pair.clone().requires_grad_(True)
    expected, got = exact(pair), fast(test)
    assert seen == [torch.float32, torch.bfloat16]
    assert layouts == [False, True]  # official layout in float32; channels-last for oneDNN bf16
    assert got.dtype == torch.float32 and not torch.equal(got, expected)
    torch.testing.assert_close(got, expected, atol=1e-2, rtol=0)
    assert torch.equal(fast.norm.running_mean, exact.norm.running_mean)  # BatchNorm in float32
    got.sum().backward()  # the generator phase's path: a float32 gradient back to the input
    assert test.grad.dtype == torch.float32 and test.grad.abs().sum() > 0
    assert all(p.grad.dtype == torch.float32 for p in fast.parameters() if p.grad is not None)
    with pytest.raises(SekdError, match="precision 'float16'"):
        MetricDiscriminator(2, "float16")


# ---------------------------------------------------------------- targets and losses


def test_metric_normalisation():
    assert normalize_pesq(2.5) == pytest.approx(0.5)
    assert normalize_pesq(4.5) == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert normalize_pesq(1.0) == pytest.approx(1 / (1 + math.exp(2.25)))
    assert normalize_composite(1.0) == 0.0 and normalize_composite(5.0) == 1.0
    assert normalize_composite(3.0) == pytest.approx(0.5)
    assert normalize_score("covl", 2.0) == pytest.approx(0.25)
    assert normalize_score("estoi", 0.7) == 0.7
    with pytest.raises(SekdError):
        normalize_score("sisdr", 1.0)


def test_okd_and_metricgan_configs():
    assert okd_config(OKD)["metrics"] == ["pesq", "csig"]
    single = {k: v for k, v in OKD.items() if k not in ("metrics", "alpha")}
    baseline = okd_config({**single, "metric": "pesq"})
    assert baseline["metrics"] == ["pesq"] and baseline["alpha"] == 0.0
    assert baseline["valid_utterances"] is None


def test_dml_term_sums_over_detached_peers():
    gens = [tiny_generator(seed) for seed in range(3)]
    disc = MetricDiscriminator(3).eval()  # no power iteration: D gives the same score twice
    noisy = gens[0].spectrogram(0.1 * torch.randn(1, 3000))
    clean = gens[0].spectrogram(0.1 * torch.randn(1, 3000))
    outputs = [g.enhance_features(noisy) for g in gens]  # all with gradients
    loss, adversarial, dml = generator_loss(disc, 1, clean, outputs[1], [outputs[0], outputs[2]], 5)
    mse = torch.nn.functional.mse_loss
    expected_dml = mse(outputs[1], outputs[0]) + mse(outputs[1], outputs[2])  # a sum, not a mean
    assert torch.allclose(dml, expected_dml)
    score = disc(discriminator_input(clean, outputs[1]))[0, 1]
    assert torch.allclose(adversarial, (score - 1) ** 2)
    assert torch.allclose(loss, adversarial + 5 * expected_dml)
    loss.backward()
    assert all(p.grad is None for g in (gens[0], gens[2]) for p in g.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gens[1].parameters())


def test_discriminator_targets_clean_inputs_at_one():
    entry = Entry(3, np.ones(10, np.float32), torch.tensor([0.2, 0.4]), torch.tensor([0.1, 0.3]))
    noisy, clean = np.zeros(10, np.float32), np.full(10, 2.0, np.float32)
    (enh, t_enh), (noi, t_noisy), (cln, t_clean) = d_inputs(entry, noisy, clean)
    assert enh is entry.audio and noi is noisy and cln is clean
    assert torch.equal(t_enh, entry.audio_scores) and torch.equal(t_noisy, entry.noisy_scores)
    assert torch.equal(t_clean, torch.ones(2))


def _pairs(count: int, seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(seed)
    t = np.arange(8000) / 16000
    jobs = []
    for _ in range(count):
        clean = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) * (1 + np.sin(6 * t))
        jobs.append((clean, clean + 0.02 * rng.standard_normal(t.size), ("pesq", "csig"), True))
    return jobs


def test_scores_are_normalised_raw_metrics():
    reference, estimate, metrics, _ = _pairs(1)[0]
    raw = raw_scores(reference, estimate, metrics)
    assert raw["pesq"] == pytest.approx(pesq_score(reference, estimate, "wb"))
    normalised = score_job((reference, estimate, metrics, True))
    assert normalised[0] == pytest.approx(normalize_pesq(raw["pesq"]))
    assert normalised[1] == pytest.approx((raw["csig"] - 1) / 4)
    assert np.isnan(score_job((reference, np.full_like(reference, np.nan), metrics, True))).all()


def test_scoring_pool_of_two_workers_matches_in_process():
    jobs = _pairs(6)
    with WorkerPool(1) as local:
        expected = local.map(score_job, jobs)
        assert local.pids() == []
    with WorkerPool(2) as pool:
        got = pool.map(score_job, jobs)
        pids = pool.pids()
    assert len(pids) == 2 and os.getpid() not in pids
    np.testing.assert_allclose(np.stack(got), np.stack(expected))


# ---------------------------------------------------------------- the schedule end to end


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("okd_data")
    train = write_set(root, "train", [0.5, 0.6, 0.45, 0.55], seed=0)
    valid = write_set(root, "valid", [0.5, 0.6], seed=1)
    return train, valid


def _run_in_subprocess(args: dict, kill_after: int) -> subprocess.CompletedProcess:
    code = (
        "import json, sys; from sekd.distill.okd import train_okd; "
        "train_okd(**json.loads(sys.argv[1]))"
    )
    env = {**os.environ, KILL_ENV: str(kill_after)}
    return subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], env=env, capture_output=True, text=True
    )


def test_schedule_runs_end_to_end_and_resumes_after_a_kill(tiny_data, tmp_path, caplog):
    train, valid = tiny_data
    common = {"student_model_cfg": STUDENT, "okd_cfg": OKD, "train_manifest": str(train)}
    common["valid_manifest"] = str(valid)
    killed = {**common, "out_dir": str(tmp_path / "out"), "checkpoint_dir": str(tmp_path / "ck")}
    proc = _run_in_subprocess(killed, kill_after=1)
    assert proc.returncode == -9, proc.stderr[-2000:]
    state = torch.load(tmp_path / "ck" / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1 and state["history"] == [1]
    assert not (tmp_path / "out").exists()

    with caplog.at_level(logging.INFO, logger="sekd"):
        metrics = train_okd(**killed)
    assert "resumed after epoch 1" in caplog.text
    history = pd.read_csv(tmp_path / "out" / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert history["history_size"].tolist() == [4, 8]  # + samples_per_epoch per D phase
    assert history["history_sampled"].tolist() == [0, 2]  # int(4 * hist_portion) at epoch 2
    assert history["loss_g_pesq"].isna().tolist() == [True, False]  # epoch 1 trains D only
    assert history["dml_g_csig"].iloc[1] > 0
    assert metrics["epochs_run"] == 2 and metrics["history_size"] == 8
    assert set(metrics["generators"]) == {"pesq", "csig"}
    student = load_model(tmp_path / "out")
    assert isinstance(student, MetricGANGRU) and student.min_mask == OKD["min_mask"]
    assert (tmp_path / "out" / "generators" / "csig" / "model.safetensors").is_file()

    fresh = {**common, "out_dir": str(tmp_path / "o2"), "checkpoint_dir": str(tmp_path / "c2")}
    train_okd(**fresh)  # uninterrupted: the resumed run must be identical
    resumed = pd.read_csv(tmp_path / "o2" / "history.csv")
    columns = [c for c in history.columns if "seconds" not in c]
    pd.testing.assert_frame_equal(history[columns], resumed[columns])
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 6000)).astype("f4"))
    assert torch.equal(student(wave), load_model(tmp_path / "o2")(wave))


def test_metricgan_baseline_has_one_generator_and_no_peer_term(tiny_data, tmp_path):
    train, valid = tiny_data
    single = {k: v for k, v in OKD.items() if k not in ("metrics", "alpha")}
    cfg = {**single, "metric": "pesq", "epochs": 2, "samples_per_epoch": 2}
    metrics = train_okd(STUDENT, cfg, train, valid, tmp_path / "out", tmp_path / "ck")
    history = pd.read_csv(tmp_path / "out" / "history.csv")
    assert metrics["method"] == "metricgan" and list(metrics["generators"]) == ["pesq"]
    assert history["dml_g_pesq"].iloc[1] == 0.0
    assert history["loss_g_pesq"].iloc[1] == history["adv_g_pesq"].iloc[1]
    assert not (tmp_path / "out" / "generators").exists()


def test_an_epoch_without_a_generator_step_is_never_selected(tiny_data, tmp_path):
    """Epoch 1 trains D only: its generators are the initial weights, never a candidate."""
    train, valid = tiny_data
    single = {k: v for k, v in OKD.items() if k not in ("metrics", "alpha")}
    cfg = {**single, "metric": "pesq", "epochs": 1, "samples_per_epoch": 2}
    metrics = train_okd(STUDENT, cfg, train, valid, tmp_path / "one", tmp_path / "ck1")
    assert metrics["best_epoch"] == 0 and metrics["updates"] == 0  # not trained at this budget
    spec = yaml.safe_load((tmp_path / "one" / "model.yaml").read_text())
    assert spec["extra"]["updates"] == 0
    cfg["epochs"] = 2
    metrics = train_okd(STUDENT, cfg, train, valid, tmp_path / "two", tmp_path / "ck2")
    assert metrics["best_epoch"] == 2 and metrics["updates"] == 2  # one step per utterance


def test_too_short_training_utterances_are_rejected(tiny_data, tmp_path):
    train, valid = tiny_data
    with pytest.raises(SekdError, match="too short for the MetricGAN discriminator"):
        train_okd(
            STUDENT, {**OKD, "segment_seconds": 0.005}, train, valid, tmp_path / "o", tmp_path
        )


def test_the_schema_offers_exactly_the_target_metrics_the_code_computes():
    from sekd.config import schema
    from sekd.metrics.targets import TARGET_METRICS

    assert schema()["$defs"]["okd_metric"]["enum"] == list(TARGET_METRICS)


def test_d_precision_is_an_option_whose_default_keeps_the_config_identity(tiny_data, tmp_path):
    assert okd_config({**OKD, "d_precision": "float32"}) == okd_config(OKD)
    assert okd_config({**OKD, "d_precision": "bfloat16"})["d_precision"] == "bfloat16"
    params = load_params(ROOT / "params.yaml")
    params["distill"]["okd"]["d_precision"] = "bfloat16"
    validate_params(copy.deepcopy(params))
    params["distill"]["okd"]["d_precision"] = "float16"
    with pytest.raises(SekdError, match="d_precision"):
        validate_params(params)
    train, valid = tiny_data
    single = {k: v for k, v in OKD.items() if k not in ("metrics", "alpha")}
    cfg = {**single, "metric": "pesq", "epochs": 1, "samples_per_epoch": 2}
    losses = []
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        ck = tmp_path / f"{precision}_ck"
        train_okd(STUDENT, {**cfg, "d_precision": precision}, train, valid, out, ck)
        losses.append(pd.read_csv(out / "history.csv")["loss_d"].iloc[0])
    assert losses[0] != losses[1] and losses[1] == pytest.approx(losses[0], rel=0.01)
