"""Real-time factor of the GRU mask nets on one CPU thread: torch and ONNX Runtime, offline and
streamed hop by hop, and many streams through the fused frame graph at once.

RTF = processing seconds / audio seconds, so 0.01 means 1 % of one core. Random weights are used:
a GRU's cost does not depend on its weights. The streamed figures include the numpy framing
(``sekd.framing``, or ``sekd.fused``'s edges and copies), as a deployment pays it; the per-frame
time is what must fit in one hop.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from sekd.export import OnnxEnhancer, export_model
from sekd.io import SAMPLE_RATE
from sekd.models import build_model
from sekd.models.complexity import count_parameters
from sekd.models.store import save_model
from sekd.stream import StreamingEnhancer

from .common import Options, Result, Table, fit_length, median_seconds, params, reference_speech

TARGET_2X32 = 0.002  # the 2x32 student streamed through the fused ONNX graph
TARGET_MODE = "onnx fused stream"
ANCHORS = (
    ("GTCRN, streaming (i5-12400)", 0.07),
    ("DeepFilterNet2", 0.04),
    ("DeepFilterNet3 (single-thread notebook CPU)", 0.19),
)
MODES = ("torch offline", "torch stream", "onnx offline", "onnx stream", TARGET_MODE)


def model_configs(cfg: dict, quick: bool) -> dict[str, dict]:
    """The student architecture at growing widths, and the teacher as params.yaml defines it."""
    student = cfg["student"]["model"]
    sizes = [32] if quick else [32, 64, 128]
    configs = {}
    for hidden in sizes:
        conf = {**student["conf"], "hidden": hidden}
        tag = " (student)" if hidden == student["conf"]["hidden"] else ""
        configs[f"{conf['layers']}x{hidden}{tag}"] = {"name": student["name"], "conf": conf}
    teacher = cfg["teacher"]["model"]
    configs[f"{teacher['conf']['layers']}x{teacher['conf']['hidden']} (teacher)"] = teacher
    return configs


def runners(model_cfg: dict, folder: Path) -> tuple[dict, dict, OnnxEnhancer]:
    """The ways to enhance a waveform with one random-weight model, its facts, its ONNX export."""
    model = build_model(model_cfg["name"], model_cfg["conf"]).eval()
    save_model(folder / "model", model, model_cfg)
    meta = export_model(folder / "model", folder / "onnx")
    onnx = OnnxEnhancer(folder / "onnx")
    stream, onnx_stream, fused = StreamingEnhancer(model), onnx.streamer(), onnx.fused_streamer()

    def offline(wave: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(wave)[None])[0].numpy()

    ways = {
        "torch offline": offline,
        "torch stream": lambda w: stream.run(w, model.hop),
        "onnx offline": onnx.enhance,
        "onnx stream": lambda w: onnx_stream.run(w, model.hop),
        TARGET_MODE: lambda w: fused.run(w, model.hop),
    }
    facts = {
        "params": count_parameters(model),
        "hop": model.hop,
        "n_fft": model.n_fft,
        "latency_ms": stream.latency_ms,
        "onnx_max_abs_error": max(meta["max_abs_error"].values()),
    }
    return ways, facts, onnx


def many_streams(onnx: OnnxEnhancer, wave: np.ndarray, counts: tuple, repeats: int) -> dict:
    """Median wall seconds to stream ``count`` different signals (``wave`` rotated) at once,
    hop by hop through one fused graph call per hop, for each count."""
    seconds = {}
    for count in counts:
        waves = np.stack([np.roll(wave, 997 * index) for index in range(count)])
        waves = waves if count > 1 else wave  # one stream takes 1-D chunks
        streamer = onnx.fused_streamer(count)
        seconds[count] = median_seconds(lambda s=streamer, w=waves: s.run(w, onnx.hop), repeats)
    return seconds


def run(options: Options) -> Result:
    torch.set_num_threads(1)  # ONNX sessions are single-threaded in sekd.export already
    seconds, repeats = options.pick((3.0, 2), (10.0, 5))
    speech, _, source = reference_speech(options.shared)
    wave = fit_length(speech, int(seconds * SAMPLE_RATE))
    table = Table(
        f"RTF on 1 CPU thread, {seconds:g} s of audio, median of {repeats} after a warm-up",
        ["model", "params", "mode", "RTF", "target", "ms/frame", "frame budget ms", "latency ms"],
    )
    counts = options.pick((1, 8), (1, 8, 64))
    streams = Table(
        f"Many streams through frame.onnx at once, {seconds:g} s each, one call per hop, "
        f"median of {repeats}",
        ["model", "streams", "wall s", "RTF per stream", "ms per hop call", "frame budget ms"],
    )
    figures: dict = {"audio_seconds": seconds, "repeats": repeats, "audio": source, "models": {}}
    for name, model_cfg in model_configs(params(options.repo), options.quick).items():
        with tempfile.TemporaryDirectory() as tmp:
            ways, facts, onnx = runners(model_cfg, Path(tmp))
            frames = 1 + wave.size // facts["hop"]
            rtf = {}
            for mode, enhance in ways.items():
                rtf[mode] = median_seconds(lambda e=enhance: e(wave), repeats) / seconds
                per_frame = 1000 * rtf[mode] * seconds / frames
                budget = 1000 * facts["hop"] / SAMPLE_RATE
                target = TARGET_2X32 if (name.split()[0], mode) == ("2x32", TARGET_MODE) else None
                row = [name, facts["params"], mode, rtf[mode], target, per_frame, budget]
                table.rows.append([*row, facts["latency_ms"]])
            walls = many_streams(onnx, wave, counts, repeats)
        for count, wall in walls.items():
            row = [name, count, wall, wall / (count * seconds), 1000 * wall / frames, budget]
            streams.rows.append(row)
        per_stream = {count: wall / (count * seconds) for count, wall in walls.items()}
        figures["models"][name] = {
            **facts,
            "conf": model_cfg["conf"],
            "rtf": rtf,
            "streams": {"wall_seconds": walls, "rtf_per_stream": per_stream},
        }
    table.notes += [f"anchor: {label} RTF {value}" for label, value in ANCHORS]
    table.notes += [
        f"target: RTF <= {TARGET_2X32} for the 2x32 student, {TARGET_MODE} (hop by hop)",
        "latency: algorithmic (one n_fft window, sekd.stream); add compute time per hop",
        "ms/frame: processing time per hop of input; must stay below the frame budget (one hop)",
    ]
    streams.notes += [
        "streams: different signals of equal length, hop-sized chunks, states stacked per stream",
        "RTF per stream = wall / (streams x audio seconds); ms per hop call = wall / frames",
    ]
    figures["anchors"] = dict(ANCHORS)
    figures["target_2x32"] = TARGET_2X32
    figures["target_mode"] = TARGET_MODE
    return Result(figures, [table, streams])
