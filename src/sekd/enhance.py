"""``sekd enhance``: enhance a noisy file, or every .wav/.flac under a folder, with a model folder.

Any model folder works offline (teacher, student, personalised student); ``stream=True`` feeds a
causal GRU student through ``StreamingEnhancer`` one hop at a time, as a real-time device would,
with the same output. Inputs of any rate and channel count are read as 16 kHz mono by
``sekd.io.read_audio``; the output is resampled back (polyphase, as ``read_audio`` does) and written
at the input's rate and length, with the same relative path and format under the output folder.
Runs on the GPU when present (``sekd.device.pick_device``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from sekd.device import pick_device
from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, atomic_path, read_audio, write_audio
from sekd.models.store import load_model
from sekd.progress import progress
from sekd.stream import StreamingEnhancer

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
PEAK_LIMIT = 0.99  # louder outputs are scaled down to this peak: PCM files cannot hold |x| > 1

Enhance = Callable[[np.ndarray], np.ndarray]


def enhance_path(
    input_path: str | Path, output_dir: str | Path, model_dir: str | Path, stream: bool = False
) -> list[Path]:
    """Enhance ``input_path`` (a file or a folder tree) into ``output_dir``; the written paths."""
    jobs = plan_outputs(Path(input_path), Path(output_dir))
    enhance = load_enhancer(Path(model_dir), stream)
    for source, target in progress(jobs, desc="enhance"):
        enhance_file(source, target, enhance)
    log.info("enhanced %d file(s) into %s", len(jobs), output_dir)
    return [target for _, target in jobs]


def find_inputs(input_path: Path) -> list[Path]:
    """``input_path`` itself if a file, else the .wav/.flac files under it (recursively)."""
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise SekdError(f"{input_path}: input file or folder not found")
    files = sorted(
        p for p in input_path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
    )
    if not files:
        raise SekdError(f"{input_path}: no {'/'.join(AUDIO_SUFFIXES)} files in this folder")
    return files


def plan_outputs(input_path: Path, output_dir: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs: same relative path under ``output_dir``; other formats become .wav."""
    root = input_path if input_path.is_dir() else input_path.parent
    jobs = []
    for source in find_inputs(input_path):
        target = output_dir / source.relative_to(root)
        if target.suffix.lower() not in AUDIO_SUFFIXES:
            target = target.with_suffix(".wav")
        if target.resolve() == source.resolve():
            raise SekdError(
                f"{source}: the output would overwrite it; choose another output folder"
            )
        jobs.append((source, target))
    return jobs


def load_enhancer(model_dir: Path, stream: bool) -> Enhance:
    """A function enhancing a 16 kHz waveform with the model in ``model_dir``."""
    if not model_dir.is_dir():
        raise SekdError(f"{model_dir}: model folder not found")
    device = pick_device()
    model = load_model(model_dir, device=device)
    if stream:
        streamer = StreamingEnhancer(model)
        return lambda wave: streamer.run(wave, streamer.hop)

    def offline(wave: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(wave).to(device)[None])[0].float().cpu().numpy()

    return offline


def enhance_file(source: Path, target: Path, enhance: Enhance) -> None:
    """Read ``source`` at 16 kHz, enhance, write ``target`` at the source's rate and length."""
    noisy = read_audio(source, allow_silent=True)
    info = sf.info(source)
    try:
        enhanced = enhance(noisy)
    except (SekdError, RuntimeError) as err:
        raise SekdError(f"{source}: cannot enhance: {err}") from None
    out = to_rate(enhanced, info.samplerate, info.frames)
    peak = float(np.abs(out).max(initial=0.0))
    if peak > PEAK_LIMIT:
        log.warning("%s: enhanced peak %.3g, scaled down to %.2f", source, peak, PEAK_LIMIT)
        out *= PEAK_LIMIT / peak
    write_like(target, out, info.samplerate)


def to_rate(audio: np.ndarray, rate: int, length: int) -> np.ndarray:
    """16 kHz ``audio`` resampled to ``rate`` and cut or zero-padded to ``length`` samples."""
    if rate != SAMPLE_RATE:
        g = gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, rate // g, SAMPLE_RATE // g)
    audio = np.asarray(audio[:length], dtype=np.float32)
    return np.pad(audio, (0, length - audio.size))


def write_like(path: Path, audio: np.ndarray, rate: int) -> None:
    """Write 24-bit PCM in the format ``path``'s suffix names (FLAC or WAV), atomically."""
    if path.suffix.lower() != ".flac":
        write_audio(path, audio, rate)
        return
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, rate, subtype="PCM_24", format="FLAC")
