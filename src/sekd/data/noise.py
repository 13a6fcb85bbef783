"""Noise recordings: synthesised demo kinds, or a folder of real recordings (DEMAND, MUSAN, WHAM!).

Either way the noise folder holds ``noises.csv`` (``noise_id, kind, path, seconds``) that later
steps read through :func:`load_noises`; demo audio lives in the folder (relative paths), real
recordings stay where they are (absolute paths).

Demo kinds, each seeded per recording so the files do not depend on the number of workers:

* ``white``, ``pink``, ``brown``: Gaussian noise with power spectra flat, 1/f (-3 dB/octave) and
  1/f^2 (-6 dB/octave), shaped in the frequency domain.
* ``babble``: ``babble_talkers`` talkers summed at equal RMS, each a held-out babble speaker's
  speech from a random starting point (speakers are reused when there are fewer than talkers).
* ``modulated``: coloured noise under a slow (0.5-4 Hz) sinusoidal amplitude envelope.
* ``hum``: a mains hum (50 or 60 Hz and harmonics) over a little pink noise.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from sekd.data.corpus import find_audio, log_formats, probe_audio, safe_name, warn_doubtful
from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, atomic_dir, read_audio, read_table, write_audio
from sekd.parallel import WorkerPool

log = logging.getLogger(__name__)

NOISES_CSV = "noises.csv"
NOISE_COLUMNS = ["noise_id", "kind", "path", "seconds"]
DEMO_KINDS = ("white", "pink", "brown", "babble", "modulated", "hum")
PEAK = 0.5  # demo noises are peak-normalised to this; mixing sets the SNR later
LOW_CUT_HZ = 20.0  # coloured noise is flat below this, so brown noise does not drift off
BABBLE_SECONDS_PER_SPEAKER = 120.0  # speech read per babble speaker


def coloured_noise(
    n: int, exponent: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    gain = np.maximum(freqs, LOW_CUT_HZ) ** (-exponent / 2.0)
    gain[0] = 0.0  # no DC
    return np.fft.irfft(spectrum * gain, n)


def modulated_noise(n: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Coloured noise under a slow sinusoidal envelope: level changes a stationary model misses."""
    carrier = coloured_noise(n, rng.uniform(0.0, 2.0), rng, sample_rate)
    rate_hz, depth, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 0.9), rng.uniform(0, 2 * np.pi)
    t = np.arange(n) / sample_rate
    return carrier * (1.0 + depth * np.sin(2 * np.pi * rate_hz * t + phase))


def hum_noise(n: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mains hum: 50 or 60 Hz and a few harmonics of random level and phase, over faint noise."""
    mains = rng.choice([50.0, 60.0])
    harmonics = np.arange(1, int(rng.integers(4, 9)) + 1)
    amplitudes = rng.uniform(0.3, 1.0, harmonics.size) / harmonics
    phases = rng.uniform(0, 2 * np.pi, harmonics.size)
    t = np.arange(n) / sample_rate
    hum = np.zeros(n)
    for k, amp, phase in zip(harmonics, amplitudes, phases, strict=True):  # a handful, not samples
        hum += amp * np.sin(2 * np.pi * k * mains * t + phase)
    floor = coloured_noise(n, 1.0, rng, sample_rate)
    return hum + floor * (0.03 * _rms(hum) / _rms(floor))  # noise ~30 dB below the hum


def babble_noise(
    n: int, speech: list[np.ndarray], talkers: int, rng: np.random.Generator
) -> np.ndarray:
    """``talkers`` voices at equal RMS, each one speaker's speech looped from a random start."""
    streams = [s for s in speech if s.size and _rms(s) > 0]
    if not streams:
        raise SekdError("noise.demo.kinds: 'babble' needs speech of the split.babble speakers")
    order = np.resize(rng.permutation(len(streams)), talkers)  # every speaker before any repeats
    mix = np.zeros(n)
    for index in order:
        stream = streams[index]
        start = int(rng.integers(stream.size))
        looped = np.resize(np.roll(stream, -start), n)
        mix += looped / _rms(looped)
    return mix


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _render_noise(task: tuple) -> float:
    """Generate one demo recording from its own seed and write it; its length in seconds."""
    path, kind, seed, n, talkers, speech = task
    rng = np.random.default_rng(seed)
    if kind in ("white", "pink", "brown"):
        audio = coloured_noise(n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind], rng)
    elif kind == "modulated":
        audio = modulated_noise(n, rng)
    elif kind == "hum":
        audio = hum_noise(n, rng)
    else:
        audio = babble_noise(n, speech, talkers, rng)
    write_audio(path, (audio * (PEAK / np.abs(audio).max())).astype(np.float32))
    return n / SAMPLE_RATE


def make_demo_noise(
    cfg: dict, babble_speech: list[np.ndarray] | None, out_dir: Path, workers: int = 1
) -> pd.DataFrame:
    """Synthesise ``noise.demo.per_kind`` recordings of each kind into ``out_dir``, atomically.

    Generation is vectorised (well under 0.1 s per 30 s recording), so it runs in this process:
    spawning ``workers`` would cost more than it saves. Each recording has its own seed.
    """
    demo = cfg["demo"]
    unknown = sorted(set(demo["kinds"]) - set(DEMO_KINDS))
    if unknown:
        raise SekdError(f"noise.demo.kinds: unknown kinds {unknown} (choose from {DEMO_KINDS})")
    if "babble" in demo["kinds"] and not babble_speech:
        raise SekdError("noise.demo.kinds: 'babble' needs speech of the split.babble speakers")
    n = int(round(demo["seconds"] * SAMPLE_RATE))
    rows, seeds = [], []
    for kind in demo["kinds"]:
        for r in range(demo["per_kind"]):
            noise_id = f"{kind}_{r:02d}"
            rows.append({"noise_id": noise_id, "kind": kind, "path": f"{noise_id}.wav"})
            seeds.append([demo["seed"], DEMO_KINDS.index(kind), r])  # stable if kinds are reordered
    log.info(
        "noise: synthesising %d recordings of %.1f s (%s)",
        len(rows),
        n / SAMPLE_RATE,
        demo["kinds"],
    )
    with atomic_dir(out_dir) as tmp:
        tasks = [
            (tmp / row["path"], row["kind"], seed, n, demo["babble_talkers"],
             babble_speech if row["kind"] == "babble" else None)
            for row, seed in zip(rows, seeds, strict=True)
        ]  # fmt: skip
        for row, seconds in zip(rows, map(_render_noise, tasks), strict=True):
            row["seconds"] = seconds
        table = pd.DataFrame(rows, columns=NOISE_COLUMNS)
        table.to_csv(tmp / NOISES_CSV, index=False)
    log.info("noise: wrote %d recordings to %s", len(table), out_dir)
    return load_noises(out_dir)


def scan_noise_folder(cfg: dict, out_dir: Path, workers: int = 1) -> pd.DataFrame:
    """Index real noise recordings below ``noise.folder.root``; kind = first sub-folder name.

    DEMAND ``DKITCHEN/ch01.wav`` -> kind ``DKITCHEN``; MUSAN ``noise/free-sound/*.wav`` -> ``noise``
    (or ``free-sound`` with root ``musan/noise``); a flat folder (WHAM!) -> ``noise``. Every file is
    read once to validate it; paths are stored absolute and nothing is copied.
    """
    folder = cfg["folder"]
    root = Path(folder["root"]).expanduser().resolve() if folder["root"] else None
    files = find_audio(root, folder["extensions"], "noise.folder.root")
    kinds = [
        safe_name(p.relative_to(root).parts[0]) if p.parent != root else "noise" for p in files
    ]
    log.info("noise: validating %d recordings below %s", len(files), root)
    with WorkerPool(workers) as pool:
        probes = pool.map(probe_audio, files, desc="probing")
    log_formats([fmt for _, fmt, _ in probes], files, "noise")
    warn_doubtful(files, probes, "noise")
    ids = [safe_name(f"{kind}_{p.stem}") for kind, p in zip(kinds, files, strict=True)]
    counts = Counter(ids)
    ids = [
        noise_id
        if counts[noise_id] == 1
        else safe_name(p.relative_to(root).with_suffix("").as_posix())
        for noise_id, p in zip(ids, files, strict=True)
    ]
    table = pd.DataFrame(
        {
            "noise_id": ids,
            "kind": kinds,
            "path": [str(p) for p in files],
            "seconds": [seconds for seconds, _, _ in probes],
        },
        columns=NOISE_COLUMNS,
    )
    with atomic_dir(out_dir) as tmp:
        table.to_csv(tmp / NOISES_CSV, index=False)
    summary = ", ".join(f"{k} {c}" for k, c in sorted(Counter(kinds).items()))
    log.info("noise: indexed %d recordings (%s) into %s", len(table), summary, out_dir)
    return load_noises(out_dir)


def build_noise(
    cfg: dict, babble_speech: list[np.ndarray] | None, out_dir: Path, workers: int = 1
) -> pd.DataFrame:
    """The ``sekd noise`` step (``cfg`` is ``params['noise']``); ``babble_speech`` feeds babble."""
    source = cfg["source"]
    if source == "demo":
        return make_demo_noise(cfg, babble_speech, out_dir, workers)
    if source == "folder":
        return scan_noise_folder(cfg, out_dir, workers)
    raise SekdError(f"noise.source: unknown source '{source}' (demo or folder)")


def load_noises(noise_dir: Path) -> pd.DataFrame:
    """The noise index with ``path`` made absolute."""
    noise_dir = Path(noise_dir)
    text_columns = ["noise_id", "kind", "path"]
    df = read_table(noise_dir / NOISES_CSV, NOISE_COLUMNS, text_columns, "noise index")
    df["path"] = [str((noise_dir / p).resolve()) for p in df["path"]]
    df["seconds"] = df["seconds"].astype(float)
    return df


def babble_speech_for(
    corpus: pd.DataFrame, speakers: list[str], max_seconds: float = BABBLE_SECONDS_PER_SPEAKER
) -> list[np.ndarray]:
    """One speech stream per babble speaker: their utterances (in id order) joined, up to a cap.

    ``corpus`` is :func:`sekd.data.corpus.load_utterances` output; the cap keeps real corpora
    (LibriSpeech speakers have ~25 min each) from being read in full for 30 s of babble.
    """
    streams = []
    for speaker in sorted(speakers):
        rows = corpus[corpus["speaker"] == speaker].sort_values("utterance")
        if rows.empty:
            raise SekdError(f"split: babble speaker '{speaker}' has no utterances in the corpus")
        budget = np.cumsum(rows["seconds"].to_numpy()) - rows["seconds"].to_numpy() < max_seconds
        streams.append(np.concatenate([read_audio(p) for p in rows["path"][budget]]))
    return streams
