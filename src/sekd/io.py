"""Atomic file output and audio I/O with input checks.

Every writer goes through a temporary sibling path and an ``os.replace`` so that a crash or a bad
input never leaves a partial file where a later step (or Snakemake/DVC) would take it as done.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
import yaml

from sekd.errors import SekdError

if TYPE_CHECKING:  # pandas takes ~1 s to import: scoring workers, which only read audio, skip it
    import pandas as pd

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-4  # peak amplitude below which a file counts as silent
_UMASK = os.umask(0)
os.umask(_UMASK)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
LOW_SPACE_BYTES = 1 << 20  # free space below which an errno-less write error means "disk full"


class DiskFullError(SekdError):
    """A write ran out of space; the message names the output and says so, in one line."""


def _out_of_space(err: BaseException, folder: Path) -> bool:
    """Whether ``err``, raised while writing into ``folder``, means its device is full.

    An ``OSError`` says so by its errno. libsndfile ("System error.") and torch's zip writer
    ("enforce fail at inline_container.cc") drop the errno, so for those the device's free space
    decides.
    """
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        return True
    if not isinstance(err, (OSError, RuntimeError)):  # LibsndfileError is a RuntimeError
        return False
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < LOW_SPACE_BYTES


@contextlib.contextmanager
def disk_full_named(path: Path, folder: Path) -> Iterator[None]:
    """Within: a write error caused by a full device becomes one :class:`DiskFullError` naming
    ``path`` (the output being made; an inner writer's error is renamed to it)."""
    try:
        yield
    except DiskFullError:
        raise DiskFullError(_disk_full_message(path)) from None
    except (OSError, RuntimeError) as err:
        if _out_of_space(err, folder):
            raise DiskFullError(_disk_full_message(path)) from None
        raise


def _disk_full_message(path: Path) -> str:
    return f"{path}: disk full: no space left on its device; free some and rerun"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds.
    A full device is reported as a :class:`DiskFullError` naming ``path``."""
    path = Path(path)
    with disk_full_named(path, path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp)
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are shared files
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it replaces ``path`` only on success.

    Temporary siblings of ``path`` that a killed run left (``.<name>.*.tmp``) are removed first:
    one job writes one output (Snakemake's rule), so none of them belongs to a live writer."""
    path = Path(path)
    with disk_full_named(path, path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~_UMASK)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_yaml(path: str | Path, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tags that build objects or run code) that refuses a key given twice
    in one mapping; PyYAML keeps the last one without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given at line {first[key] + 1})",
                    key_node.start_mark,
                )
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> Any:
    """A YAML file, safely; a syntax error or a duplicate key names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SekdError(f"{path}: file not found")
    try:
        return yaml.load(path.read_text(), Loader=StrictLoader)  # noqa: S506 (a safe loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = " ".join(str(part) for part in (err.context, err.problem) if part)
        raise SekdError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as err:
        raise SekdError(f"{path}: invalid YAML: {err}") from None


def read_table(
    path: str | Path, columns: list[str], text_columns: list[str], what: str
) -> pd.DataFrame:
    """Read one of sekd's CSV indexes (corpus, noise, manifest); ids stay strings, "" stays "".

    A missing file, an unparsable file or missing ``columns`` raise an error naming the file.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise SekdError(f"{path}: {what} not found")
    try:
        df = pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise SekdError(f"{path}: cannot read {what}: {err}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SekdError(f"{path}: {what} lacks columns {', '.join(missing)}")
    return df


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write audio (``[samples]`` or ``[samples, channels]``) as 24-bit PCM WAV.

    24-bit PCM rather than float: libsndfile stamps float WAVs with a PEAK chunk holding the write
    time, which would make identical audio differ byte-wise (and change DVC hashes) on every run.
    Samples beyond [-1, 1] would clip silently, so they are an error: scale before writing.
    """
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.abs(audio).max(initial=0.0))
    if not np.isfinite(peak) or peak > 1.0:
        raise SekdError(f"{path}: refusing to write audio with peak {peak:.3g} (outside [-1, 1])")
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, sample_rate, subtype="PCM_24", format="WAV")


def read_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    *,
    allow_silent: bool = False,
    keep_channels: bool = False,
) -> np.ndarray:
    """Read a file as mono float32 at ``sample_rate`` (``[samples, channels]`` with
    ``keep_channels``).

    Multi-channel files are averaged to mono and other rates are resampled (polyphase), each with a
    logged notice; any bit depth soundfile reads is accepted. NaN/Inf samples and (unless
    ``allow_silent``) silent files are rejected with an error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise SekdError(f"{path}: audio file not found")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise SekdError(f"{path}: cannot read audio: {err}") from None
    if audio.size == 0:
        raise SekdError(f"{path}: empty audio file")
    if not np.isfinite(audio).all():
        raise SekdError(f"{path}: contains NaN or Inf samples")
    if audio.shape[1] > 1 and not keep_channels:
        log.info("%s: %d channels, downmixed to mono", path, audio.shape[1])
        audio = audio.mean(axis=1, keepdims=True)
    audio = audio if keep_channels else audio[:, 0]
    if rate != sample_rate:
        log.info("%s: resampled from %d Hz to %d Hz", path, rate, sample_rate)
        g = np.gcd(rate, sample_rate)
        from scipy.signal import resample_poly  # 0.7 s to import: only when resampling

        audio = resample_poly(audio, sample_rate // g, rate // g, axis=0).astype(np.float32)
    if not allow_silent and np.abs(audio).max() < SILENCE_PEAK:
        raise SekdError(f"{path}: silent audio (peak below {SILENCE_PEAK})")
    return audio
