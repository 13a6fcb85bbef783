"""Speech corpora: the offline demo corpus (eSpeak NG speakers) and a reader for real corpora.

Both write the same index into the corpus folder, which later steps read through
:func:`load_utterances`:

* ``utterances.csv``: ``speaker, utterance, path, seconds, text``; ``path`` is relative to the
  corpus folder for the demo (the audio lives there) and absolute for a real corpus (never copied).
* ``speakers.csv``: one row per speaker with how it was made or where it was found.

The speaker split (:func:`assign_speakers`) is speaker-disjoint; the babble speakers are held out to
build babble noise only, so no test voice ever appears as interference in training.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from sekd.data.espeak import Voice, synthesize
from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, atomic_dir, read_audio, read_table, write_audio
from sekd.parallel import WorkerPool

log = logging.getLogger(__name__)

UTTERANCES_CSV = "utterances.csv"
SPEAKERS_CSV = "speakers.csv"
UTTERANCE_COLUMNS = ["speaker", "utterance", "path", "seconds", "text"]
SPLITS = ("train", "valid", "test", "babble")

# Demo speakers: timbre = accent x variant; prosody = pitch x rate x pitch range (eSpeak's scales).
ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
PITCHES = tuple(range(30, 71, 5))
RATES = tuple(range(140, 201, 10))
PITCH_RANGES = tuple(range(30, 81, 10))

PEAK = 0.5  # demo utterances are peak-normalised to this
SILENCE_MARGIN_S = 0.1  # silence left before and after the speech of a demo utterance
SILENCE_DB = -40.0  # samples this far below the peak count as silence
SHORT_SECONDS = 0.5  # corpus.folder.short_seconds default: shorter files get a warning


def speaker_voices(n: int, seed: int) -> list[Voice]:
    """``n`` distinct eSpeak speakers, drawn deterministically from ``seed``.

    Timbres (accent x voice variant) are used before any repeats, alternating female and male
    while both last; every speaker also gets its own pitch, rate and pitch range, so even speakers
    sharing a timbre sound different.
    """
    if n < 1:
        raise SekdError(f"corpus.demo.speakers: must be at least 1, got {n}")
    rng = np.random.default_rng([seed, 0])
    males = [f"{a}+{v}" for a in ACCENTS for v in MALE_VARIANTS]
    females = [f"{a}+{v}" for a in ACCENTS for v in FEMALE_VARIANTS]
    males = [males[i] for i in rng.permutation(len(males))]
    females = [females[i] for i in rng.permutation(len(females))]
    timbres = [t for pair in zip(females, males, strict=False) for t in pair]
    timbres += males[len(females) :]
    if n > len(timbres) * len(PITCHES) * len(RATES) * len(PITCH_RANGES):
        raise SekdError(
            f"corpus.demo.speakers: {n} is more distinct voices than eSpeak offers here"
        )
    voices: list[Voice] = []
    for i in range(n):
        while True:
            voice = Voice(
                name=timbres[i % len(timbres)],
                pitch=int(rng.choice(PITCHES)),
                rate=int(rng.choice(RATES)),
                pitch_range=int(rng.choice(PITCH_RANGES)),
            )
            if voice not in voices:
                break
        voices.append(voice)
    return voices


def speaker_names(n: int) -> list[str]:
    """Short, sortable, filesystem-safe names: s00, s01, ... (wider past 100 speakers)."""
    width = max(2, len(str(n - 1)))
    return [f"s{i:0{width}d}" for i in range(n)]


def word_list() -> list[str]:
    """The built-in vocabulary of the demo sentences (``words.txt`` in this package)."""
    text = resources.files("sekd.data").joinpath("words.txt").read_text()
    return [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]


def random_sentences(count: int, words: tuple[int, int], rng: np.random.Generator) -> list[str]:
    """``count`` sentences of ``words[0]``..``words[1]`` random words from :func:`word_list`."""
    vocabulary = np.array(word_list())
    lengths = rng.integers(words[0], words[1] + 1, size=count)
    sentences = []
    for length in lengths:
        text = " ".join(rng.choice(vocabulary, size=int(length)))
        sentences.append(text[0].upper() + text[1:] + ".")
    return sentences


def trim_silence(audio: np.ndarray, margin_s: float = SILENCE_MARGIN_S) -> np.ndarray:
    """Leave exactly ``margin_s`` of silence before and after the speech (cut or zero-padded).

    Silence is anything ``SILENCE_DB`` under the peak. eSpeak itself leaves only ~10 ms, so this
    mostly pads: every utterance then starts and ends the same way, as a recorded one would.
    """
    peak = np.abs(audio).max(initial=0.0)
    loud = np.flatnonzero(np.abs(audio) > peak * 10 ** (SILENCE_DB / 20))
    if loud.size == 0:
        return audio
    margin = np.zeros(int(round(margin_s * SAMPLE_RATE)), dtype=audio.dtype)
    return np.concatenate([margin, audio[loud[0] : loud[-1] + 1], margin])


def _render_utterance(task: tuple[Path, str, Voice]) -> float:
    """Synthesise, trim, normalise and write one demo utterance; its duration in seconds."""
    path, text, voice = task
    audio = trim_silence(synthesize(text, voice))
    peak = np.abs(audio).max(initial=0.0)
    if peak < 1e-3:
        raise SekdError(f"{path}: eSpeak produced silence for voice {voice.name} and {text!r}")
    write_audio(path, (audio * (PEAK / peak)).astype(np.float32))
    return len(audio) / SAMPLE_RATE


def make_demo_corpus(cfg: dict, out_dir: Path, workers: int = 1) -> pd.DataFrame:
    """Build the demo corpus (``cfg`` is ``params['corpus']``) into ``out_dir``, atomically.

    The voices and sentences are drawn in this process from ``corpus.demo.seed``; each utterance is
    then rendered independently, so the files are byte-identical whatever ``workers`` is.
    """
    demo = cfg["demo"]
    out_dir = Path(out_dir)
    voices = speaker_voices(demo["speakers"], demo["seed"])
    names = speaker_names(len(voices))
    per_speaker = demo["utterances_per_speaker"]
    texts = random_sentences(
        len(voices) * per_speaker, tuple(demo["words"]), np.random.default_rng([demo["seed"], 1])
    )
    rows = [
        {"speaker": name, "utterance": f"{name}_{j:03d}", "path": f"{name}/{name}_{j:03d}.wav"}
        for name in names
        for j in range(per_speaker)
    ]
    for row, text in zip(rows, texts, strict=True):
        row["text"] = text
    voice_of = dict(zip(names, voices, strict=True))
    log.info(
        "corpus: synthesising %d speakers x %d utterances with eSpeak NG (%d workers)",
        len(voices),
        per_speaker,
        workers,
    )
    with atomic_dir(out_dir) as tmp:
        tasks = [(tmp / r["path"], r["text"], voice_of[r["speaker"]]) for r in rows]
        with WorkerPool(workers) as pool:
            durations = pool.map(_render_utterance, tasks, desc="utterances")
        for row, seconds in zip(rows, durations, strict=True):
            row["seconds"] = seconds
        utterances = pd.DataFrame(rows, columns=UTTERANCE_COLUMNS)
        speakers = pd.DataFrame(
            {
                "speaker": names,
                "voice": [v.name for v in voices],
                "gender": ["female" if "+f" in v.name else "male" for v in voices],
                "pitch": [v.pitch for v in voices],
                "rate": [v.rate for v in voices],
                "pitch_range": [v.pitch_range for v in voices],
            }
        )
        _write_index(tmp, utterances, speakers)
    log.info(
        "corpus: wrote %d utterances (%.1f min) to %s",
        len(utterances),
        utterances["seconds"].sum() / 60,
        out_dir,
    )
    return load_utterances(out_dir)


def _with_totals(speakers: pd.DataFrame, utterances: pd.DataFrame) -> pd.DataFrame:
    totals = utterances.groupby("speaker")["seconds"].agg(utterances="count", seconds="sum")
    return speakers.join(totals, on="speaker")


def _write_index(folder: Path, utterances: pd.DataFrame, speakers: pd.DataFrame) -> None:
    utterances.to_csv(folder / UTTERANCES_CSV, index=False)
    _with_totals(speakers, utterances).to_csv(folder / SPEAKERS_CSV, index=False)


def safe_name(name: str) -> str:
    """A file and folder name made of ``[A-Za-z0-9_.-]`` only (other characters become ``-``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def find_audio(root: Path, extensions: list[str], key: str) -> list[Path]:
    """All audio files below ``root`` (sorted); ``key`` names the config entry in errors.

    An extension is a suffix (``flac`` matches ``*.flac``) or, starting with ``_``, a name ending:
    ``_mic1.flac`` keeps one of VCTK 0.92's two microphone copies of every utterance.
    """
    if root is None:
        raise SekdError(f"{key}: not set (needed when the source is 'folder')")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SekdError(f"{key}: folder {root} not found")
    endings = tuple(
        e.lower() if e.startswith("_") else "." + e.lower().lstrip(".") for e in extensions
    )
    files = sorted(
        p
        for p in _walk_files(root)
        if p.name.lower().endswith(endings) and not p.name.startswith(".") and p.is_file()
    )
    if not files:
        raise SekdError(f"{key}: no {'/'.join(sorted(endings))} files below {root}")
    return files


def _walk_files(root: Path) -> list[Path]:
    """Every file below ``root``, following symlinked folders (a corpus assembled from links is
    common) but entering each real folder once, so a link back up cannot loop."""
    seen: set[str] = set()
    files = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        files += [Path(folder) / name for name in names]
    return files


def _speaker_name(path: Path, root: Path) -> str | None:
    """The speaker's original name: its folder (any depth below it), or the ``<speaker>_`` prefix
    of a file lying in root; None for a root file without a prefix."""
    relative = path.relative_to(root)
    if len(relative.parts) > 1:
        return relative.parts[0]
    return path.stem.split("_")[0] if "_" in path.stem else None


def _one_name_each(originals: dict[str, set[str]], what: str) -> None:
    """Refuse two original names that :func:`safe_name` makes one (e.g. differing only in
    non-ASCII letters): merging them would silently join two speakers or two recordings."""
    for name, sources in sorted(originals.items()):
        if len(sources) > 1:
            both = " and ".join(repr(source) for source in sorted(sources))
            raise SekdError(
                f"corpus.folder.root: {what} {both} both become {name!r} in sekd's file-safe "
                "names; rename one of them"
            )


def wav_truncation(path: Path) -> str | None:
    """Why a RIFF/WAVE file is cut short (its data chunk claims more bytes than the file holds),
    or None. libsndfile reads such a file at its short length without a word."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size, position = os.fstat(handle.fileno()).st_size, 12
        while position + 8 <= size:
            handle.seek(position)
            chunk, length = struct.unpack("<4sI", handle.read(8))
            if chunk == b"data":
                available = size - position - 8
                unknown = length in (0, 0xFFFFFFFF)  # streamed writers leave the size open
                if not unknown and length > available:
                    return f"truncated: {available} of its {length} data bytes are there"
                return None
            position += 8 + length + (length & 1)
    return None


def _speaker_folder(path: Path, root: Path) -> Path:
    return root if path.parent == root else root / path.relative_to(root).parts[0]


def _stable_order(path: Path, root: Path) -> str:
    """A sort key that spreads a capped selection over chapters yet never depends on other files."""
    return hashlib.sha1(path.relative_to(root).as_posix().encode()).hexdigest()


def probe_audio(path: Path) -> tuple[float, str, str | None]:
    """Validate one file with :func:`read_audio`; its seconds at 16 kHz, its stored format and,
    for a WAV cut short, why (see :func:`wav_truncation`)."""
    seconds = len(read_audio(path)) / SAMPLE_RATE
    info = sf.info(path)
    return (
        seconds,
        f"{info.samplerate} Hz, {info.channels} ch, {info.subtype}",
        wav_truncation(path),
    )


def warn_doubtful(
    paths: list[Path], probes: list[tuple], what: str, short_seconds: float | None = None
) -> None:
    """One warning for the truncated files among ``paths`` (their :func:`probe_audio` results)
    and one for those shorter than ``short_seconds``: kept, but such files usually come from a
    broken copy or export, worth a look before hours of training on them."""
    truncated = [f"{p} ({note})" for p, (_, _, note) in zip(paths, probes, strict=True) if note]
    if truncated:
        log.warning(
            "%s: %d truncated files kept at their readable length: %s",
            what,
            len(truncated),
            "; ".join(truncated[:10]),
        )
    if short_seconds is None:
        return
    short = [
        f"{p} ({s:.2f} s)" for p, (s, _, _) in zip(paths, probes, strict=True) if s < short_seconds
    ]
    if short:
        log.warning(
            "%s: %d files shorter than %s.folder.short_seconds = %g s kept: %s",
            what,
            len(short),
            what,
            short_seconds,
            "; ".join(short[:10]),
        )


def log_formats(formats: list[str], paths: list[Path], what: str) -> None:
    """One notice per stored format, saying which ones ``read_audio`` converts on every read."""
    counts = Counter(formats)
    example = dict(zip(formats, paths, strict=True))
    for fmt, count in sorted(counts.items()):
        if fmt.startswith(f"{SAMPLE_RATE} Hz, 1 ch"):
            log.info("%s: %d files are %s", what, count, fmt)
        else:
            log.info(
                "%s: %d files are %s (e.g. %s): accepted, read as %d Hz mono",
                what,
                count,
                fmt,
                example[fmt],
                SAMPLE_RATE,
            )


def folder_speaker_files(cfg: dict) -> tuple[Path, dict[str, list[Path]]]:
    """The folder corpus's root and the files it indexes per speaker, by name only (no audio read).

    ``cfg`` is ``params['corpus']``. Speakers with fewer than ``min_utterances`` files are dropped
    (logged); ``max_utterances`` keeps a stable, chapter-spreading selection per speaker.
    """
    folder = cfg["folder"]
    root = Path(folder["root"]).expanduser().resolve() if folder["root"] else None
    files = find_audio(root, folder["extensions"], "corpus.folder.root")
    stray = [path for path in files if _speaker_name(path, root) is None]
    if stray and len(stray) == len(files):
        raise SekdError(
            f"{stray[0]}: file directly in corpus.folder.root needs a '<speaker>_' name prefix "
            "(or put files in one folder per speaker)"
        )
    if stray:
        log.warning(
            "corpus: skipped %d files directly in %s without a '<speaker>_' name prefix: %s",
            len(stray),
            root,
            ", ".join(path.name for path in stray[:10]),
        )
    by_speaker: dict[str, list[Path]] = {}
    originals: dict[str, set[str]] = {}
    for path in files:
        name = _speaker_name(path, root)
        if name is not None:
            by_speaker.setdefault(safe_name(name), []).append(path)
            originals.setdefault(safe_name(name), set()).add(name)
    _one_name_each(originals, "speakers")
    minimum, cap = folder["min_utterances"], folder["max_utterances"]
    dropped = sorted(s for s, paths in by_speaker.items() if len(paths) < minimum)
    if dropped:
        log.info(
            "corpus: dropped %d speakers with < %d files: %s", len(dropped), minimum, dropped[:20]
        )
    kept = {s: paths for s, paths in sorted(by_speaker.items()) if len(paths) >= minimum}
    if not kept:
        raise SekdError(
            f"corpus.folder.min_utterances: no speaker below {root} has {minimum} or more files"
        )
    if cap is not None:
        kept = {
            s: sorted(sorted(paths, key=lambda p: _stable_order(p, root))[:cap])
            for s, paths in kept.items()
        }
    return root, kept


def folder_utterance_counts(cfg: dict) -> dict[str, int]:
    """Utterances per speaker that ``sekd corpus`` will index from the folder corpus, by speaker;
    cheap (a file listing, no audio read), so config validation can check them before any job."""
    return {speaker: len(paths) for speaker, paths in folder_speaker_files(cfg)[1].items()}


def scan_folder_corpus(cfg: dict, out_dir: Path, workers: int = 1) -> pd.DataFrame:
    """Index a real corpus laid out as speaker folders (``cfg`` is ``params['corpus']``).

    Speaker = first folder below ``corpus.folder.root`` (LibriSpeech ``spk/chapter/*.flac``,
    VCTK ``wav48/p225/*.wav`` with root ``wav48``), or the ``<speaker>_`` prefix of files lying
    directly in the root (VoiceBank-DEMAND ``clean_trainset_wav/p226_001.wav``). Every kept file is
    read once to validate it; the index stores absolute paths and no audio is copied.
    """
    root, kept = folder_speaker_files(cfg)
    rows = [{"speaker": s, "path": p} for s, paths in kept.items() for p in paths]
    paths = [r["path"] for r in rows]
    log.info("corpus: validating %d files of %d speakers in %s", len(rows), len(kept), root)
    with WorkerPool(workers) as pool:
        probes = pool.map(probe_audio, paths, desc="probing")
    log_formats([fmt for _, fmt, _ in probes], paths, "corpus")
    warn_doubtful(paths, probes, "corpus", cfg["folder"].get("short_seconds", SHORT_SECONDS))
    stems = Counter(p.stem for p in paths)
    originals: dict[str, set[str]] = {}
    for row, (seconds, _, _) in zip(rows, probes, strict=True):
        path = row["path"]
        unique = path.stem if stems[path.stem] == 1 else path.relative_to(root).with_suffix("")
        original = str(unique).replace("/", "_")
        originals.setdefault(safe_name(original), set()).add(original)
        row.update(utterance=safe_name(original), path=str(path), seconds=seconds, text="")
    _one_name_each(originals, "utterances")
    utterances = pd.DataFrame(rows, columns=UTTERANCE_COLUMNS)
    speakers = pd.DataFrame(
        {"speaker": list(kept), "folder": [str(_speaker_folder(p[0], root)) for p in kept.values()]}
    )
    with atomic_dir(out_dir) as tmp:
        _write_index(tmp, utterances, speakers)
    log.info(
        "corpus: indexed %d utterances (%.1f h) of %d speakers into %s",
        len(utterances),
        utterances["seconds"].sum() / 3600,
        len(kept),
        out_dir,
    )
    return load_utterances(out_dir)


def build_corpus(cfg: dict, out_dir: Path, workers: int = 1) -> pd.DataFrame:
    """The ``sekd corpus`` step: build or index the corpus named by ``corpus.source``."""
    source = cfg["source"]
    if source == "demo":
        return make_demo_corpus(cfg, out_dir, workers)
    if source == "folder":
        return scan_folder_corpus(cfg, out_dir, workers)
    raise SekdError(f"corpus.source: unknown source '{source}' (demo or folder)")


def load_utterances(corpus_dir: Path) -> pd.DataFrame:
    """The corpus index with ``path`` made absolute; speaker and utterance ids stay strings."""
    corpus_dir = Path(corpus_dir)
    text_columns = ["speaker", "utterance", "path", "text"]
    df = read_table(corpus_dir / UTTERANCES_CSV, UTTERANCE_COLUMNS, text_columns, "corpus index")
    df["path"] = [str((corpus_dir / p).resolve()) for p in df["path"]]
    df["seconds"] = df["seconds"].astype(float)
    return df


def load_speakers(corpus_dir: Path) -> pd.DataFrame:
    """The per-speaker table written next to the utterance index."""
    csv = Path(corpus_dir) / SPEAKERS_CSV
    if not csv.is_file():
        raise SekdError(f"{csv}: speaker table not found (run `sekd corpus` first)")
    return pd.read_csv(csv, dtype={"speaker": str}, keep_default_na=False)


def assign_speakers(speakers: list[str], split_cfg: dict) -> dict[str, list[str]]:
    """Speaker-disjoint split into train/valid/test/babble (``split_cfg`` is ``params['split']``).

    The speakers are shuffled with ``split.seed`` and dealt out in that order; speakers beyond the
    requested counts are left unused (logged).
    """
    pool = sorted(set(speakers))
    counts = {name: int(split_cfg[name]) for name in SPLITS}
    needed = sum(counts.values())
    if needed > len(pool):
        detail = " + ".join(f"{name} {n}" for name, n in counts.items())
        raise SekdError(f"split: needs {needed} speakers ({detail}) but the corpus has {len(pool)}")
    order = [pool[i] for i in np.random.default_rng(split_cfg["seed"]).permutation(len(pool))]
    split, start = {}, 0
    for name in SPLITS:
        split[name] = sorted(order[start : start + counts[name]])
        start += counts[name]
    if start < len(pool):
        log.info("split: %d of %d speakers unused", len(pool) - start, len(pool))
    return split
