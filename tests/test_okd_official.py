"""The official MetricGAN-OKD setting: its generator, STFT, per-generator seeds, PESQ selection and
the ``config/settings/okd.yaml`` overlay (issue 16; wooseok-shin/MetricGAN-OKD ``SE/model.py``,
``SE/signal_processing.py``, ``SE/train.py``)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny import tiny_train, write_set

from sekd.config import load_params, validate_params
from sekd.data.datasets import collate
from sekd.device import seed_everything
from sekd.distill.okd import OKDTrainer, generator_config, okd_config, train_okd
from sekd.engine.supervised import Trainer
from sekd.errors import SekdError
from sekd.models import build_model
from sekd.models.complexity import count_parameters
from sekd.models.metricgan_blstm import MetricGANBLSTM
from sekd.models.store import load_model

ROOT = Path(__file__).resolve().parents[1]
STUDENT = {"name": "gru_mask", "conf": {"hidden": 8, "layers": 1, "n_fft": 32, "hop": 16}}
OFFICIAL = {
    "metrics": ["pesq", "csig"],
    "alpha": 5.0,
    "epochs": 2,
    "samples_per_epoch": 2,
    "hist_portion": 0.5,
    "lr": 5e-4,
    "grad_clip": 5.0,
    "min_mask": 0.05,
    "segment_seconds": 0.3,  # 4800 samples: 19 frames at hop 256, D needs 17
    "generator": "official",
    "select": "pesq",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("okd_official_data")
    train = write_set(root, "train", [0.5, 0.6, 0.45], seed=0)
    valid = write_set(root, "valid", [0.5, 0.6], seed=1)
    return train, valid


def official_generator() -> MetricGANBLSTM:
    cfg = generator_config(STUDENT, 0.05, "official")
    return build_model(cfg["name"], cfg["conf"])


# ---------------------------------------------------------------- the generator


def lstm_params(inputs: int, hidden: int) -> int:
    """PyTorch LSTM, one layer, one direction: 4 gates x (W_ih in*h + W_hh h*h + b_ih h + b_hh h)."""
    return 4 * (inputs * hidden + hidden * hidden + 2 * hidden)


def linear_params(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs


def test_parameter_count_is_the_official_architectures():
    # BLSTM 257 -> 2 x 200 (layer 1 sees both directions: 400), FC 400 -> 300, FC 300 -> 257,
    # one learnable-sigmoid slope per bin
    expected = (
        2 * lstm_params(257, 200)  # 2 x 367,200
        + 2 * lstm_params(400, 200)  # 2 x 481,600
        + linear_params(400, 300)  # 120,300
        + linear_params(300, 257)  # 77,357
        + 257
    )
    assert expected == 1_895_514  # methods.md: 1.896 M; hyper.ai lists 1.89 M
    gen = official_generator()
    assert count_parameters(gen) == expected
    lstm = gen.lstm
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers) == (257, 200, 2)
    assert lstm.bidirectional and lstm.dropout == 0.1 and lstm.batch_first
    assert (gen.fc1.in_features, gen.fc1.out_features) == (400, 300)
    assert (gen.fc2.in_features, gen.fc2.out_features) == (300, 257)
    assert gen.act.negative_slope == 0.3
    assert torch.equal(gen.activation.slope, torch.ones(257)) and gen.activation.ceiling == 1.2
    assert gen.causal is False and gen.bins == 257


def test_initialisation_is_the_officials():
    gen = official_generator()
    for name, param in gen.lstm.named_parameters():
        if "bias" in name:
            assert torch.count_nonzero(param) == 0, name
        elif "weight_hh" in name:  # orthogonal [800, 200]: orthonormal columns
            eye = param.detach().T @ param.detach()
            assert torch.allclose(eye, torch.eye(200), atol=1e-4), name
        else:  # Xavier-uniform on the stacked [800, in] matrix
            bound = math.sqrt(6 / (param.shape[0] + param.shape[1]))
            assert param.abs().max() <= bound and param.abs().max() > 0.95 * bound, name
    for layer in (gen.fc1, gen.fc2):
        bound = math.sqrt(6 / (layer.in_features + layer.out_features))
        assert layer.weight.abs().max() <= bound and torch.count_nonzero(layer.bias) == 0


def test_stft_is_hamming_512_hop_256_as_official():
    gen = official_generator()
    assert (gen.n_fft, gen.hop) == (512, 256)
    n = torch.arange(512, dtype=torch.float64)
    hamming = 0.54 - 0.46 * torch.cos(2 * math.pi * n / 512)  # periodic, torch.hamming_window
    assert torch.allclose(gen.window.double(), hamming, atol=1e-6)
    wave = 0.1 * torch.randn(1, 16000)
    feats = gen.spectrogram(wave)
    assert feats.shape == (1, 16000 // 256 + 1, 257)
    # official get_spec_and_phase: zero-padded centred STFT, log1p(sqrt(|X|^2 + 1e-14))
    spec = torch.stft(
        wave, 512, 256, 512, torch.hamming_window(512), center=True, pad_mode="constant",
        return_complex=True,
    )  # fmt: skip
    official = torch.log1p((spec.real**2 + spec.imag**2 + 1e-14).sqrt()).transpose(2, 1)
    assert torch.allclose(feats, official, atol=1e-6)
    # frame 1 starts one hop (256 samples) after frame 0: shift the input by one hop
    shifted = gen.spectrogram(torch.cat([torch.zeros(1, 256), wave], dim=1))
    assert torch.allclose(shifted[:, 2:10], feats[:, 1:9], atol=1e-5)
    # waveform path: expm1 of the masked log1p magnitude with the noisy phase, input length
    gen.eval()
    enhanced = gen.enhance_features(feats)
    rebuilt = torch.istft(
        torch.polar(torch.expm1(enhanced).transpose(1, 2), spec.angle()),
        512, 256, 512, torch.hamming_window(512), center=True, length=16000,
    )  # fmt: skip
    assert torch.allclose(gen(wave), rebuilt, atol=1e-5)


# ---------------------------------------------------------------- the trainer


def test_each_generator_and_seed_starts_from_its_own_weights(tiny_data, tmp_path):
    train, valid = tiny_data

    def trainer(cfg: dict, seed: int) -> OKDTrainer:
        return OKDTrainer(STUDENT, cfg, train, valid, tmp_path / f"ck{seed}", seed=seed)

    first, other = trainer(OFFICIAL, 0), trainer(OFFICIAL, 1)
    w = [g.lstm.weight_ih_l0.detach() for g in first.generators]
    assert not torch.equal(w[0], w[1])  # generators 0 and 1 of seed 0
    assert not torch.equal(w[0], other.generators[0].lstm.weight_ih_l0.detach())  # seed 0 vs 1
    torch.manual_seed(1)  # generator i of seed s is built after torch.manual_seed(1000 s + i)
    assert torch.equal(official_generator().lstm.weight_ih_l0, w[1])
    again = trainer(OFFICIAL, 0)
    assert torch.equal(again.generators[1].lstm.weight_ih_l0, w[1])
    # without the key: today's generators, the student GRU drawn from the one seeded stream
    default = {k: v for k, v in OFFICIAL.items() if k not in ("generator", "select")}
    student = trainer(default, 0)
    seed_everything(0)
    conf = {**STUDENT["conf"], "min_mask": 0.05}
    expected = [build_model("metricgan_gru", conf) for _ in range(2)]
    for gen, ref in zip(student.generators, expected, strict=True):
        assert all(
            torch.equal(a, b) for a, b in zip(gen.parameters(), ref.parameters(), strict=True)
        )
    assert okd_config(default) == okd_config({**default, "generator": "student", "select": "own"})


def test_official_generator_with_init_nokd_is_refused():
    with pytest.raises(SekdError, match=r"distill\.okd\.init: nokd.*generator: official"):
        okd_config({**OFFICIAL, "init": "nokd"})
    single = {k: v for k, v in OFFICIAL.items() if k not in ("metrics", "alpha")}
    with pytest.raises(SekdError, match=r"distill\.metricgan\.init"):
        okd_config({**single, "metric": "pesq", "init": "nokd"})
    params = load_params(ROOT / "params.yaml")
    params["distill"]["okd"].update(generator="official", init="nokd")
    with pytest.raises(SekdError, match=r"distill\.okd\.init"):
        validate_params(copy.deepcopy(params))


def test_tiny_official_run_selects_every_generator_by_pesq(tiny_data, tmp_path):
    train, valid = tiny_data
    metrics = train_okd(STUDENT, OFFICIAL, train, valid, tmp_path / "out", tmp_path / "ck")
    assert metrics["selected_by"] == "pesq" and metrics["params"] == 1_895_514
    assert metrics["best_epoch"] >= 2  # epoch 1 has no generator step
    for gen in metrics["generators"].values():
        assert gen["best_epoch"] >= 2 and gen["updates"] > 0
        assert math.isfinite(gen["best_valid_pesq"])
    history = pd.read_csv(tmp_path / "out" / "history.csv")
    assert {"valid_pesq_pesq", "valid_pesq_csig", "valid_csig"} <= set(history.columns)
    assert (history["valid_pesq_pesq"] == history["valid_pesq"]).all()
    student = load_model(tmp_path / "out")
    assert isinstance(student, MetricGANBLSTM) and not student.causal
    csig = load_model(tmp_path / "out" / "generators" / "csig")
    assert isinstance(csig, MetricGANBLSTM)


# ---------------------------------------------------------------- the settings overlay


def test_okd_settings_overlay_validates_and_asks_for_the_official_setup():
    params = load_params(ROOT / "params.yaml", ROOT / "config" / "settings" / "okd.yaml")
    distill = params["distill"]
    assert {"okd", "metricgan"} <= set(distill["methods"])
    for section in (distill["okd"], distill["metricgan"]):
        assert section["generator"] == "official" and section["init"] == "scratch"
        assert section["select"] == "pesq" and section["samples_per_epoch"] == 100
    assert distill["okd"]["metrics"] == ["pesq", "csig"] and distill["okd"]["epochs"] == 750
    assert distill["metricgan"]["epochs"] == 600
    cfg = generator_config(params["student"]["model"], distill["okd"]["min_mask"], "official")
    gen = build_model(cfg["name"], cfg["conf"])
    assert (gen.n_fft, gen.hop) == (512, 256)
    assert torch.allclose(gen.window, torch.hamming_window(512))


def test_okd_overlays_no_kd_baseline_is_the_official_generator_trained_supervised(
    tiny_data, tmp_path
):
    """The no-KD row of the okd setting is the official BLSTM (the OKD generators' architecture),
    trained by the common supervised trainer: one step on the task loss moves its weights."""
    params = load_params(ROOT / "params.yaml", ROOT / "config" / "settings" / "okd.yaml")
    student = params["student"]["model"]
    assert student["name"] == "metricgan_blstm"
    official = generator_config(student, params["distill"]["okd"]["min_mask"], "official")
    assert student["name"] == official["name"]
    assert student["conf"] == official["conf"]
    train, valid = tiny_data
    trainer = Trainer(student, tiny_train(), train, valid, tmp_path / "ck")
    assert isinstance(trainer.model, MetricGANBLSTM)
    assert count_parameters(trainer.model) == 1_895_514
    batch = collate([trainer.train_set[i] for i in range(2)])
    assert trainer.model(batch["noisy"]).shape == batch["noisy"].shape  # a waveform, same length
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loss, parts = trainer.step(batch)
    assert math.isfinite(loss) and trainer.updates == 1 and math.isfinite(parts["si_sdr"])
    moved = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("lstm.") for k in moved) and any(k.startswith("fc2.") for k in moved)
    trainer.dtype = torch.bfloat16  # AMP as on a GPU (CPU autocast: the BLSTM's output is bf16)
    loss, _ = trainer.step(batch)
    assert math.isfinite(loss) and trainer.updates == 2


def test_the_okd_overlay_replaces_the_gru_student_whole():
    """A model given with name and conf replaces params.yaml's GRU: no GRU key leaks into the
    BLSTM's conf (the schema and the model refuse them)."""
    cfg = load_params(ROOT / "params.yaml", ROOT / "config" / "settings" / "okd.yaml")
    assert "bidirectional" not in cfg["student"]["model"]["conf"]
    with pytest.raises((TypeError, SekdError), match="bidirectional"):
        build_model("metricgan_blstm", {"bidirectional": True})
