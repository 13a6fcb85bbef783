"""What every section shares: options, result tables, timers and test speech.

Sections return a ``Result``: ``figures`` (the JSON's numbers, keyed for scripts) and ``tables``
(what the console shows). Timers report medians after a warm-up because the first call pays for
lazy imports, allocator growth and ONNX/DNSMOS model loading, which a long run never sees again.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sekd.io import SAMPLE_RATE

SENTENCE = "The quick brown fox jumps over the lazy dog while seven birds sing in the tall trees."


@dataclass(frozen=True)
class Options:
    """The command line, resolved: every section reads only this."""

    quick: bool
    repo: Path
    shared: Path  # the folder holding testdata/ (reference speech), as tests/conftest.py finds it
    demo_dir: Path | None = None
    base_env: dict[str, str] = field(default_factory=dict)  # environment before thread pinning

    def pick(self, quick: Any, full: Any) -> Any:
        """``quick`` under ``--quick``, else ``full``: keeps each section's sizes on one line."""
        return quick if self.quick else full


@dataclass
class Table:
    """One console table; its rows also go to the JSON as records."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        """Fixed-width text: names left-aligned in the first column, numbers right-aligned."""
        cells = [[fmt(v) for v in row] for row in self.rows]
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(self.columns)]

        def line(texts: list[str]) -> str:
            pairs = enumerate(zip(texts, widths, strict=True))
            return "  ".join(t.ljust(w) if i == 0 else t.rjust(w) for i, (t, w) in pairs)

        rule = "  ".join("-" * w for w in widths)
        body = [line(r) for r in cells]
        return "\n".join(
            [self.title, line(self.columns), rule, *body, *(f"  * {n}" for n in self.notes)]
        )

    def records(self) -> dict:
        """Rows as column -> value (the JSON); column names must be unique or values are lost."""
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"table {self.title!r}: repeated column names {self.columns}")
        rows = [dict(zip(self.columns, row, strict=True)) for row in self.rows]
        return {"title": self.title, "rows": rows, "notes": self.notes}


@dataclass
class Result:
    figures: dict = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)


def fmt(value: Any) -> str:
    """Compact cell text: 3 significant digits for floats, '-' for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.3g}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"
    return str(value)


@contextlib.contextmanager
def on_device(device: str) -> Iterator[None]:
    """``SEKD_DEVICE=device`` for the duration: how the library is told where to train."""
    saved = os.environ.get("SEKD_DEVICE")
    os.environ["SEKD_DEVICE"] = device
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("SEKD_DEVICE")
        else:
            os.environ["SEKD_DEVICE"] = saved


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall seconds."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cpu_timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the CPU seconds of this process (unaffected by other load on the machine)."""
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``repeats`` calls after ``warmup`` uncounted ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn)[1] for _ in range(repeats))


def shared_dir(repo: Path) -> Path:
    """Where tests/conftest.py looks for testdata/: ``$SEKD_SHARED`` or the repo's sibling."""
    return Path(os.environ.get("SEKD_SHARED", repo.parent / "shared"))


def reference_speech(shared: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Clean speech, its noisy version when known, and where it came from.

    The PESQ package's reference pair (real speech, babble at 0 dB) when ../shared/testdata has it;
    else a sentence from eSpeak NG (the demo corpus's engine); else a speech-like synthetic signal.
    """
    folder = shared / "testdata" / "pesq"
    if (folder / "speech.wav").is_file() and (folder / "speech_bab_0dB.wav").is_file():
        from sekd.io import read_audio

        clean, noisy = (read_audio(folder / n) for n in ("speech.wav", "speech_bab_0dB.wav"))
        return clean, noisy, f"{folder}/speech.wav (+ babble 0 dB)"
    try:
        from sekd.data.espeak import Voice, synthesize

        return synthesize(SENTENCE, Voice("en-us", 50, 160, 50)), None, "eSpeak NG sentence"
    except Exception:  # the fallback below always works; say which source was used instead
        return speech_like(3.0, np.random.default_rng(0)), None, "synthetic speech-like signal"


def speech_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Voiced harmonics under a syllable-rate envelope with pauses: enough structure for STOI."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) * (np.sin(2 * np.pi * 0.4 * t) > -0.3)
    wave = voiced * envelope + 0.01 * rng.standard_normal(t.size)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def fit_length(wave: np.ndarray, samples: int) -> np.ndarray:
    """``wave`` repeated or cut to exactly ``samples`` samples."""
    reps = -(-samples // wave.size)
    return np.tile(wave, reps)[:samples].astype(np.float32)


def params(repo: Path) -> dict:
    """The repository's validated params.yaml (the demo configuration)."""
    from sekd.config import load_params

    return load_params(repo / "params.yaml")
