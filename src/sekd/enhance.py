"""``sekd enhance``: enhance a noisy file, or every .wav/.flac under a folder, with a model folder.

Any model folder works offline (teacher, student, personalised student), and so does a folder
that ``sekd export`` wrote (ONNX Runtime, no torch model needed); ``stream=True`` feeds a causal
GRU model through a streaming enhancer one hop at a time, as a real-time device would, with the
same output. Inputs of any rate are read at 16 kHz (``sekd.io.read_audio``), each channel
enhanced on its own; the output is resampled back (polyphase, as ``read_audio`` does) and written
at the input's rate, length and channel count, with the same relative path and format under the
output folder. Files longer than ``LONG_SECONDS`` go through the streaming enhancer in blocks
when the model can stream (equal to offline within 1e-4), so memory stays bounded however long
the file is. A folder is enhanced to the end: files that fail are listed at the end and the call
fails then. Runs on the GPU when present (``sekd.device.pick_device``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from sekd.device import pick_device
from sekd.errors import SekdError
from sekd.framing import FrameStream
from sekd.io import SAMPLE_RATE, atomic_path, read_audio
from sekd.models.store import SPEC, load_model
from sekd.progress import progress

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
PEAK_LIMIT = 0.99  # louder outputs are scaled down to this peak: PCM files cannot hold |x| > 1
LONG_SECONDS = 300.0  # longer files are streamed in blocks (bounded memory) when the model can
BLOCK_SECONDS = 10.0  # input read, enhanced and written per block of a long file
EXPORT_META = "export.json"  # what `sekd export` writes next to its ONNX graphs


@dataclass
class Enhancer:
    """A model ready to enhance 16 kHz mono waveforms: ``offline`` whole signals, or
    ``streamer()`` (None for a model that cannot stream) a fresh hop-by-hop enhancer."""

    offline: Callable[[np.ndarray], np.ndarray]
    streamer: Callable[[], FrameStream] | None
    stream: bool  # whether the user asked for streaming

    def whole(self, wave: np.ndarray) -> np.ndarray:
        """``wave`` enhanced the way the user asked (offline or streamed)."""
        if not self.stream:
            return self.offline(wave)
        streamer = self.streamer()
        return streamer.run(wave, streamer.hop)


def enhance_path(
    input_path: str | Path, output_dir: str | Path, model_dir: str | Path, stream: bool = False
) -> list[Path]:
    """Enhance ``input_path`` (a file or a folder tree) into ``output_dir``; the written paths.

    Every file is tried; when some fail, the others are still written and the error at the end
    lists the failures (one line)."""
    jobs = plan_outputs(Path(input_path), Path(output_dir))
    enhancer = load_enhancer(Path(model_dir), stream)
    written, failures = [], []
    for source, target in progress(jobs, desc="enhance"):
        try:
            enhance_file(source, target, enhancer)
        except SekdError as err:
            log.error("%s", err)
            failures.append(str(err))
        else:
            written.append(target)
    log.info("enhanced %d file(s) into %s", len(written), output_dir)
    if failures:
        raise SekdError(
            f"{len(failures)} of {len(jobs)} files not enhanced ({len(written)} written): "
            + "; ".join(failures)
        )
    return written


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
    """(input, output) pairs: same relative path under ``output_dir``; other formats become .wav.

    An output folder inside an input folder is refused: its files would be inputs of the next
    run (enhanced twice), or overwrite inputs."""
    if input_path.is_dir():
        root, out = input_path.resolve(), output_dir.resolve()
        if out == root or root in out.parents:
            raise SekdError(
                f"{output_dir}: the output folder is inside the input folder {input_path}: its "
                "files would overwrite inputs or be enhanced again next time; choose another"
            )
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


def load_enhancer(model_dir: Path, stream: bool) -> Enhancer:
    """The model in ``model_dir``: a torch model folder (``model.yaml``) or an ONNX export."""
    if not model_dir.is_dir():
        raise SekdError(f"{model_dir}: model folder not found")
    if not (model_dir / SPEC).is_file() and (model_dir / EXPORT_META).is_file():
        return _onnx_enhancer(model_dir, stream)
    device = pick_device()
    model = load_model(model_dir, device=device)

    def offline(wave: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(wave).to(device)[None])[0].float().cpu().numpy()

    from sekd.stream import StreamingEnhancer, require_causal_gru

    try:
        require_causal_gru(model)
    except SekdError:
        if stream:
            raise
        return Enhancer(offline, None, stream)
    return Enhancer(offline, lambda: StreamingEnhancer(model), stream)


def _onnx_enhancer(export_dir: Path, stream: bool) -> Enhancer:
    """A ``sekd export`` folder through ONNX Runtime (its streamer is the per-frame graph's)."""
    from sekd.export import OnnxEnhancer

    onnx = OnnxEnhancer(export_dir)
    return Enhancer(onnx.enhance, onnx.streamer, stream)


def enhance_file(source: Path, target: Path, enhancer: Enhancer) -> None:
    """Enhance ``source`` into ``target`` at the source's rate, length and channel count."""
    try:
        info = sf.info(source)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise SekdError(f"{source}: cannot read audio: {err}") from None
    if info.channels > 1:
        log.info("%s: %d channels, each enhanced on its own", source, info.channels)
    if info.duration > LONG_SECONDS and enhancer.streamer is not None:
        _enhance_in_blocks(source, target, info, enhancer)
        return
    noisy = read_audio(source, allow_silent=True, keep_channels=True)  # [samples, channels]
    try:
        channels = [enhancer.whole(noisy[:, c]) for c in range(noisy.shape[1])]
    except (SekdError, RuntimeError, ValueError) as err:
        raise SekdError(f"{source}: cannot enhance: {err}") from None
    out = np.stack([to_rate(x, info.samplerate, info.frames) for x in channels], axis=1)
    write_like(target, limit_peak(out, source), info.samplerate)


def limit_peak(audio: np.ndarray, source: Path) -> np.ndarray:
    """``audio`` scaled down to ``PEAK_LIMIT`` if louder (PCM cannot hold |x| > 1), with a note."""
    peak = float(np.abs(audio).max(initial=0.0))
    if peak > PEAK_LIMIT:
        log.warning("%s: enhanced peak %.3g, scaled down to %.2f", source, peak, PEAK_LIMIT)
        audio = audio * (PEAK_LIMIT / peak)
    return audio


def to_rate(audio: np.ndarray, rate: int, length: int) -> np.ndarray:
    """16 kHz ``audio`` resampled to ``rate`` and cut or zero-padded to ``length`` samples."""
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, rate // g, SAMPLE_RATE // g)
    audio = np.asarray(audio[:length], dtype=np.float32)
    return np.pad(audio, (0, length - audio.size))


def write_like(path: Path, audio: np.ndarray, rate: int) -> None:
    """Write 24-bit PCM in the format ``path``'s suffix names (FLAC or WAV), atomically."""
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, rate, subtype="PCM_24", format=_format(path))


def _format(path: Path) -> str:
    return "FLAC" if path.suffix.lower() == ".flac" else "WAV"


# ------------------------------------------------------------ long files, block by block


def _enhance_in_blocks(
    source: Path, target: Path, info: sf._SoundFileInfo, enhancer: Enhancer
) -> None:
    """Stream ``source`` through one streaming enhancer per channel, ``BLOCK_SECONDS`` at a time,
    resampling each block with enough context that it equals resampling the whole file; only
    a few blocks are ever in memory. A peak above ``PEAK_LIMIT`` is clipped (a whole-file scale
    would need a second pass) with a warning."""
    rate, channels = info.samplerate, info.channels
    to_16k, from_16k = BlockResampler(rate, SAMPLE_RATE), BlockResampler(SAMPLE_RATE, rate)
    streamers = [enhancer.streamer() for _ in range(channels)]
    clipped, written = 0.0, 0
    with (
        atomic_path(target) as tmp,
        sf.SoundFile(tmp, "w", rate, channels, subtype="PCM_24", format=_format(target)) as out,
    ):
        for block, last in _blocks(source, rate):
            wave = to_16k.feed(block, last)
            try:
                enhanced = np.stack(
                    [_stream(s, wave[:, c], last) for c, s in enumerate(streamers)], axis=1
                )
            except (SekdError, RuntimeError, ValueError) as err:
                raise SekdError(f"{source}: cannot enhance: {err}") from None
            back = from_16k.feed(enhanced, last)[: info.frames - written]
            clipped = max(clipped, float(np.abs(back).max(initial=0.0)))
            out.write(np.clip(back, -PEAK_LIMIT, PEAK_LIMIT))
            written += len(back)
        # resampling rounds the length: cut (above) or zero-pad to the input's, as to_rate does
        out.write(np.zeros((info.frames - written, channels), np.float32))
    if clipped > PEAK_LIMIT:
        log.warning(
            "%s: enhanced peak %.3g, clipped to %.2f (a long file)", source, clipped, PEAK_LIMIT
        )


def _stream(streamer: FrameStream, wave: np.ndarray, last: bool) -> np.ndarray:
    out = streamer.process(wave)
    return np.concatenate([out, streamer.flush()]) if last else out


def _blocks(source: Path, rate: int) -> Iterator[tuple[np.ndarray, bool]]:
    """``[samples, channels]`` float32 blocks of ``source`` and whether each is the last."""
    size = int(BLOCK_SECONDS * rate)
    try:
        with sf.SoundFile(source) as audio:
            block = audio.read(size, dtype="float32", always_2d=True)
            while block.size:
                following = audio.read(size, dtype="float32", always_2d=True)
                if not np.isfinite(block).all():
                    raise SekdError(f"{source}: contains NaN or Inf samples")
                yield block, following.size == 0
                block = following
    except (sf.LibsndfileError, RuntimeError) as err:
        raise SekdError(f"{source}: cannot read audio: {err}") from None


class BlockResampler:
    """Polyphase resampling of a signal given block by block, equal to ``resample_poly`` of the
    whole signal: each block is resampled with the filter's reach of context on both sides and
    the outputs that context alone decides are cut away."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        g = gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        # resample_poly's default filter: 2 * 10 * max(up, down) + 1 taps at the upsampled rate
        self.reach = 10 * max(self.up, self.down) // self.up + 2  # input samples on each side
        self._kept = np.zeros((0, 0), np.float32)  # the inputs still needed as context
        self._start = 0  # input index of _kept[0]
        self._emitted = 0  # output samples returned so far

    def feed(self, block: np.ndarray, last: bool) -> np.ndarray:
        """The outputs of ``block`` (``[samples, channels]``) that are final now."""
        if self.up == self.down:
            return block
        from scipy.signal import resample_poly

        kept = block if self._kept.size == 0 else np.concatenate([self._kept, block])
        end = self._start + len(kept)  # inputs seen so far
        # outputs n are decided by inputs up to (n * down + reach * up) / up: final when < end
        final = self._total(end) if last else max(0, (end - self.reach) * self.up // self.down)
        # context: from the input that the first pending output needs, aligned to `down`
        first = max(0, (self._emitted * self.down // self.up - self.reach) // self.down * self.down)
        segment = kept[first - self._start :]
        resampled = resample_poly(segment, self.up, self.down, axis=0)  # zeros beyond its ends
        offset = first * self.up // self.down
        out = resampled[self._emitted - offset : final - offset]
        self._emitted = final
        keep_from = max(0, (final * self.down // self.up - self.reach) // self.down * self.down)
        self._kept, self._start = kept[keep_from - self._start :], keep_from
        return out.astype(np.float32)

    def _total(self, inputs: int) -> int:
        return -(-inputs * self.up // self.down)  # resample_poly's output length
