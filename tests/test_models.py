"""Models: shapes, causality, registry errors, parameter and MAC counts, safetensors round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from sekd.engine import enhance, enhance_many
from sekd.errors import SekdError
from sekd.models import build_model
from sekd.models.complexity import count_parameters, macs_per_second
from sekd.models.store import load_model, save_model

SMALL_GRU = {"hidden": 16, "layers": 2, "n_fft": 256, "hop": 64}
SMALL_TASNET = {"N": 16, "L": 8, "B": 8, "H": 16, "P": 3, "X": 3, "R": 2}


@pytest.mark.parametrize(
    ("name", "conf", "latent"),
    [
        ("gru_mask", SMALL_GRU, (2, 16000 // 64 + 1, 16)),
        ("gru_mask", {**SMALL_GRU, "bidirectional": True}, (2, 16000 // 64 + 1, 32)),
        ("convtasnet", {**SMALL_TASNET, "causal": True}, None),
        ("convtasnet", SMALL_TASNET, None),
    ],
)
def test_shapes_and_latents(name, conf, latent):
    torch.manual_seed(0)
    model = build_model(name, conf)
    for length in (16000, 12345):  # also a length that does not fill the last frame/hop
        wave = torch.randn(2, length)
        assert model(wave).shape == (2, length)
    out, hidden = model(torch.randn(2, 16000), return_latent=True)
    assert out.shape == (2, 16000)
    if latent is not None:
        assert hidden.shape == latent
    else:  # Conv-TasNet: skip-path sum [B, B_channels, frames]
        assert hidden.shape[:2] == (2, SMALL_TASNET["B"]) and hidden.shape[2] >= 16000 // 4


@pytest.mark.parametrize(
    ("name", "conf"),
    [
        ("gru_mask", SMALL_GRU),  # batched: causal and frame-recurrent
        ("gru_mask_complex", SMALL_GRU),
        ("gru_mask", {**SMALL_GRU, "bidirectional": True}),  # one at a time: sees the future
        ("convtasnet", {**SMALL_TASNET, "causal": True}),  # no enhance_batch at all
    ],
)
def test_enhance_many_equals_one_utterance_at_a_time(name, conf):
    """Validation batches utterances of different lengths; no padding may reach a score."""
    torch.manual_seed(0)
    model = build_model(name, conf).eval()
    lengths = [4000, 12345, 700, 8000, 12345, 64 * 37]  # unequal, some off the hop grid
    waves = [
        np.random.default_rng(i).standard_normal(n).astype(np.float32)
        for i, n in enumerate(lengths)
    ]
    alone = [enhance(model, wave, torch.device("cpu")) for wave in waves]
    together = enhance_many(model, waves, torch.device("cpu"))
    for one, many in zip(alone, together, strict=True):
        assert one.shape == many.shape
        assert np.abs(one - many).max() < 1e-5 * max(1.0, np.abs(one).max())


def _first_changed_sample(model: torch.nn.Module, change_at: int, length: int = 8000) -> int:
    """Index of the first output sample that moves when the input changes from ``change_at`` on."""
    torch.manual_seed(1)
    wave = torch.randn(1, length)
    changed = wave.clone()
    changed[:, change_at:] += torch.randn(1, length - change_at)
    with torch.no_grad():
        diff = (model(wave) - model(changed)).abs()[0]
    moved = torch.nonzero(diff > 1e-6)
    return int(moved[0]) if len(moved) else length


def test_causal_models_ignore_the_future_beyond_one_window():
    torch.manual_seed(0)
    change_at = 5000
    student = build_model("gru_mask", SMALL_GRU).eval()
    assert student.causal
    first = _first_changed_sample(student, change_at)
    assert change_at - SMALL_GRU["n_fft"] <= first < change_at  # look-ahead: at most one window
    bidirectional = build_model("gru_mask", {**SMALL_GRU, "bidirectional": True}).eval()
    assert _first_changed_sample(bidirectional, change_at) < 1000  # sees the whole future

    causal_tasnet = build_model("convtasnet", {**SMALL_TASNET, "causal": True}).eval()
    first = _first_changed_sample(causal_tasnet, change_at)
    assert change_at - SMALL_TASNET["L"] <= first < change_at
    tasnet = build_model("convtasnet", SMALL_TASNET).eval()  # gLN: global statistics
    assert _first_changed_sample(tasnet, change_at) < 1000


def test_registry_errors_name_the_culprit():
    with pytest.raises(SekdError, match="unknown model; known models: convtasnet, gru_mask"):
        build_model("unet", {})
    with pytest.raises(SekdError, match="conf key 'hiden': unknown; known keys: hidden"):
        build_model("gru_mask", {**SMALL_GRU, "hiden": 3})
    with pytest.raises(SekdError, match="conf key 'hop': required"):
        build_model("gru_mask", {"hidden": 4, "layers": 1, "n_fft": 64})
    with pytest.raises(SekdError, match="'L'"):
        build_model("convtasnet", {**SMALL_TASNET, "L": 7})
    with pytest.raises(SekdError, match="'feature'"):
        build_model("gru_mask", {**SMALL_GRU, "feature": "mel"})


def test_parameter_and_mac_counts_match_hand_computation():
    # The personalisation paper's 2x32 student (n_fft 1024, 513 bins): about 76 k parameters.
    student = build_model("gru_mask", {"hidden": 32, "layers": 2, "n_fft": 1024, "hop": 256})
    bins, h = 513, 32
    layer1 = 3 * (bins * h + h * h + 2 * h)  # W_ih, W_hh, b_ih, b_hh of 3 gates
    layer2 = 3 * (h * h + h * h + 2 * h)
    linear = h * bins + bins
    assert count_parameters(student) == layer1 + layer2 + linear == 75777
    frames = 16000 // 256 + 1
    gru_macs = frames * 3 * ((bins * h + h * h) + (h * h + h * h))
    fft_macs = frames * (2 * 1024 * math.log2(1024) + 2 * 1024 + 2 * bins)
    expected = gru_macs + frames * h * bins + fft_macs
    assert macs_per_second(student) == pytest.approx(expected, rel=1e-9)

    # Bidirectional layers: the second layer reads 2H inputs per direction.
    bi = build_model(
        "gru_mask", {"hidden": 8, "layers": 2, "n_fft": 64, "hop": 32, "bidirectional": True}
    )
    assert (
        count_parameters(bi)
        == 2 * 3 * (33 * 8 + 8 * 8 + 16) + 2 * 3 * (16 * 8 + 8 * 8 + 16) + 16 * 33 + 33
    )

    # Conv-TasNet, counted by hand from the block structure (PReLU: one weight each).
    N, L, B, H, P, X, R = (SMALL_TASNET[k] for k in "NLBHPXR")
    block = (B * H + H) + 1 + 2 * H + (H * P + H) + 1 + 2 * H + 2 * (H * B + B)
    expected = N * L + 2 * N + (N * B + B) + X * R * block + 1 + (B * N + N) + N * L
    assert count_parameters(build_model("convtasnet", SMALL_TASNET)) == expected
    # The paper's configuration (N512 L16 B128 H512 P3 X8 R3) is ~5.1 M with two sources; one here.
    assert 4.9e6 < count_parameters(build_model("convtasnet", {})) < 5.1e6


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = {"name": "convtasnet", "conf": {**SMALL_TASNET, "causal": True}}
    model = build_model(cfg["name"], cfg["conf"])
    save_model(tmp_path / "m", model, cfg, {"note": "test"})
    spec = yaml.safe_load((tmp_path / "m" / "model.yaml").read_text())
    assert spec["name"] == "convtasnet" and spec["conf"] == cfg["conf"]
    assert spec["params"] == count_parameters(model) and spec["extra"] == {"note": "test"}
    assert spec["macs_per_second"] == pytest.approx(macs_per_second(model))
    raw = (tmp_path / "m" / "model.safetensors").read_bytes()
    assert raw[8:9] == b"{"  # safetensors: 8-byte header length, then a JSON header (no pickle)
    loaded = load_model(tmp_path / "m")
    wave = torch.randn(1, 4000)
    with torch.no_grad():
        assert torch.equal(model.eval()(wave), loaded(wave))

    (tmp_path / "m" / "model.yaml").write_text(
        yaml.safe_dump({**spec, "conf": SMALL_TASNET | {"B": 4}})
    )
    with pytest.raises(SekdError, match="weights do not match the model"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(SekdError, match="model.safetensors"):
        load_model(tmp_path / "m")
