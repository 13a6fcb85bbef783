"""Synthesise the train/valid/test mixture sets and the per-speaker personal sets.

Determinism: a split's plan (which utterance, room and noise recording each mixture uses) comes from
one generator seeded by ``[synth.seed, split index, stream]``; each room and each mixture draws its
own randomness from ``[synth.seed, split index, stream, index]``. Nothing depends on the order in
which workers finish, so the bytes written are identical for any ``workers`` and across runs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd

from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, atomic_dir, read_audio, write_audio
from sekd.parallel import WorkerPool

from .manifest import MANIFEST_COLUMNS, write_manifest
from .mixing import NOISE_REGIONS, make_target, mix, noise_segment, reverberate
from .rooms import Room, compute_rir, draw_rir, draw_room, drr_db, measure_rt60

log = logging.getLogger(__name__)

SPLIT_INDEX = {"train": 0, "valid": 1, "test": 2, "personal": 3}
MIXTURE_STREAM, ROOM_STREAM, PLAN_STREAM, SESSION_SNR_STREAM = 0, 1, 2, 3
# Personal sets use the test part of each noise recording, halved so adapt and test share no sample.
PERSONAL_NOISE_REGIONS = {"adapt": (0.8, 0.9), "test": (0.9, 1.0)}


@dataclass(frozen=True)
class MixtureJob:
    """Everything one worker needs to render one mixture (picklable, no open files)."""

    mix_id: str
    split: str
    speaker: str
    utterance: str
    speech_path: str
    room: Room
    noise_id: str
    noise_kind: str
    noise_path: str
    noise_region: tuple[float, float]
    entropy: tuple[int, ...]  # seeds this mixture's generator
    noisy_rel: str  # output paths relative to the output root
    target_rel: str  # "" when no target is written (personal adaptation set)
    target_kind: str
    early_ms: float
    snr_range: tuple[float, float]
    positions: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # fixed source, mic


@lru_cache(maxsize=16)
def _load_noise(path: str) -> np.ndarray:
    return read_audio(path)


def render_mixture(job: MixtureJob, root: Path) -> tuple[dict, float]:
    """Render and write one mixture; return its manifest row and the CPU seconds of its RIR."""
    rng = np.random.default_rng(list(job.entropy))
    started = time.process_time()  # CPU time: unaffected by other processes sharing the cores
    if job.positions is None:
        rir, _, _ = draw_rir(rng, job.room)
    else:
        rir = compute_rir(job.room, *(np.asarray(p) for p in job.positions))
    rir_seconds = time.process_time() - started
    snr = round(float(rng.uniform(*job.snr_range)), 3)

    speech = read_audio(job.speech_path).astype(np.float64)
    noise = noise_segment(
        _load_noise(job.noise_path), len(speech), job.noise_region, rng, name=job.noise_path
    )
    target = make_target(speech, rir, job.target_kind, job.early_ms)
    mixture = mix(reverberate(speech, rir), target, noise, snr, name=job.noise_path)
    write_audio(root / job.noisy_rel, mixture.noisy)
    if job.target_rel:
        write_audio(root / job.target_rel, mixture.target)
    row = {
        "id": job.mix_id,
        "split": job.split,
        "speaker": job.speaker,
        "utterance": job.utterance,
        "noisy": job.noisy_rel,
        "target": job.target_rel,
        "seconds": round(len(speech) / SAMPLE_RATE, 4),
        "room_id": job.room.room_id,
        "room_l": job.room.dims[0],
        "room_w": job.room.dims[1],
        "room_h": job.room.dims[2],
        "rt60_target": job.room.rt60_target,
        "rt60_measured": round(measure_rt60(rir), 4),
        "drr_db": round(drr_db(rir), 3),
        "snr_db": snr,
        "noise_id": job.noise_id,
        "noise_kind": job.noise_kind,
        "target_kind": job.target_kind,
    }
    return row, rir_seconds


def _draw_room_task(args: tuple[tuple[int, ...], str, dict]) -> Room:
    entropy, room_id, cfg = args
    return draw_room(np.random.default_rng(list(entropy)), room_id, cfg)


def _draw_rooms(pool: WorkerPool, cfg: dict, split: str, count: int, prefix: str) -> list[Room]:
    seed, index = int(cfg["seed"]), SPLIT_INDEX[split]
    tasks = [((seed, index, ROOM_STREAM, r), f"{prefix}{r:02d}", cfg) for r in range(count)]
    return pool.map(_draw_room_task, tasks, chunksize=1, desc="rooms")  # seconds per room


def _render(pool: WorkerPool, jobs: list[MixtureJob], root: Path) -> tuple[pd.DataFrame, float]:
    results = pool.map(partial(render_mixture, root=root), jobs, desc="mixtures")
    rows = [row for row, _ in results]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS), sum(t for _, t in results)


def _cycle_permutations(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """``count`` indices into ``size`` items: successive permutations, so use stays balanced."""
    if count == 0:
        return np.zeros(0, dtype=int)
    rounds = math.ceil(count / size)
    return np.concatenate([rng.permutation(size) for _ in range(rounds)])[:count]


def _split_pool(utterances: pd.DataFrame, speakers: list[str], what: str) -> pd.DataFrame:
    speakers = [str(s) for s in speakers]
    pool = utterances[utterances["speaker"].astype(str).isin(speakers)]
    missing = sorted(set(speakers) - set(pool["speaker"].astype(str)))
    if missing:
        raise SekdError(f"{what}: speakers without utterances in the corpus: {', '.join(missing)}")
    return pool.sort_values(["speaker", "utterance"]).reset_index(drop=True)


def _sorted_noises(noises: pd.DataFrame) -> pd.DataFrame:
    if noises.empty:
        raise SekdError("noise: no noise recordings (noises.csv is empty)")
    return noises.sort_values("noise_id").reset_index(drop=True)


def _job_settings(cfg: dict) -> dict:
    return {
        "target_kind": str(cfg["target"]),
        "early_ms": float(cfg["early_ms"]),
        "snr_range": (float(cfg["snr_db"][0]), float(cfg["snr_db"][1])),
    }


def _log_summary(name: str, df: pd.DataFrame, rooms: int, timing: dict) -> None:
    n = len(df)
    log.info(
        "%s: %d mixtures, mean SNR %.2f dB, mean RT60 measured %.3f s (target %.3f s), mean DRR "
        "%.1f dB; %d rooms calibrated in %.1f s; mixtures in %.1f s (%.1f mixtures/s; "
        "%.1f mixture RIRs per CPU second)",
        name,
        n,
        df["snr_db"].mean() if n else float("nan"),
        df["rt60_measured"].mean() if n else float("nan"),
        df["rt60_target"].mean() if n else float("nan"),
        df["drr_db"].mean() if n else float("nan"),
        rooms,
        timing["rooms"],
        timing["mixtures"],
        n / max(timing["mixtures"], 1e-9),
        n / max(timing["rir"], 1e-9),
    )


def plan_split(
    split: str,
    utterances: pd.DataFrame,
    noises: pd.DataFrame,
    speakers: list[str],
    cfg: dict,
    rooms: list[Room],
) -> list[MixtureJob]:
    """The split's mixtures: balanced cycling over utterances, rooms and noise recordings."""
    if split not in NOISE_REGIONS:
        raise SekdError(f"synth: unknown split {split!r} (expected train, valid or test)")
    pool = _split_pool(utterances, speakers, f"split.{split}")
    noises = _sorted_noises(noises)
    count = int(cfg["mixtures"][split])
    seed, index = int(cfg["seed"]), SPLIT_INDEX[split]
    rng = np.random.default_rng([seed, index, PLAN_STREAM])
    utt_order = _cycle_permutations(rng, len(pool), count)
    noise_order = _cycle_permutations(rng, len(noises), count)
    room_order = _cycle_permutations(rng, len(rooms), count)
    settings = _job_settings(cfg)
    jobs = []
    for i in range(count):
        utt, noise = pool.iloc[utt_order[i]], noises.iloc[noise_order[i]]
        mix_id = f"{split}_{i:05d}"
        jobs.append(
            MixtureJob(
                mix_id=mix_id,
                split=split,
                speaker=str(utt["speaker"]),
                utterance=str(utt["utterance"]),
                speech_path=str(utt["path"]),
                room=rooms[room_order[i]],
                noise_id=str(noise["noise_id"]),
                noise_kind=str(noise["kind"]),
                noise_path=str(noise["path"]),
                noise_region=NOISE_REGIONS[split],
                entropy=(seed, index, MIXTURE_STREAM, i),
                noisy_rel=f"noisy/{mix_id}.wav",
                target_rel=f"target/{mix_id}.wav",
                **settings,
            )
        )
    return jobs


def synthesize_split(
    split: str,
    utterances: pd.DataFrame,
    noises: pd.DataFrame,
    speakers: list[str],
    cfg: dict,
    out_dir: Path,
    workers: int,
) -> pd.DataFrame:
    """Write ``synth.mixtures.<split>`` mixtures of the split's speakers to ``out_dir``, atomically.

    Layout: ``noisy/<id>.wav``, ``target/<id>.wav``, ``manifest.csv``. Returns the manifest as
    written (paths relative to ``out_dir``).
    """
    out_dir = Path(out_dir)
    timing = {}
    with WorkerPool(workers) as pool, atomic_dir(out_dir) as tmp:
        started = time.perf_counter()
        rooms = _draw_rooms(pool, cfg, split, int(cfg["rooms"][split]), f"{split}_r")
        timing["rooms"] = time.perf_counter() - started
        jobs = plan_split(split, utterances, noises, speakers, cfg, rooms)
        started = time.perf_counter()
        df, timing["rir"] = _render(pool, jobs, tmp)
        timing["mixtures"] = time.perf_counter() - started
        write_manifest(df, tmp / "manifest.csv")
    _log_summary(split, df, len(rooms), timing)
    return df


def plan_personal(
    utterances: pd.DataFrame,
    noises: pd.DataFrame,
    speakers: list[str],
    cfg: dict,
    rooms: dict[str, Room],
) -> list[MixtureJob]:
    """Per speaker: one room, fixed source and mic, one noise; disjoint adapt/test utterances.

    With ``synth.personal.session_snr_db`` each speaker's session (adapt and test) is mixed at one
    SNR from that list, as the zero-shot PSE recipe's sessions are; the SNRs are dealt over the
    speakers in balanced rounds from a stream of their own, so nothing else is drawn differently.
    """
    noises = _sorted_noises(noises)
    seed, index = int(cfg["seed"]), SPLIT_INDEX["personal"]
    need = {"adapt": int(cfg["personal"]["adapt"]), "test": int(cfg["personal"]["test"])}
    noise_order = _cycle_permutations(
        np.random.default_rng([seed, index, PLAN_STREAM]), len(noises), len(speakers)
    )
    session_snrs = cfg["personal"].get("session_snr_db")
    if session_snrs:
        snr_order = _cycle_permutations(
            np.random.default_rng([seed, index, SESSION_SNR_STREAM]),
            len(session_snrs),
            len(speakers),
        )
    jobs = []
    for k, speaker in enumerate(speakers):
        settings = _job_settings(cfg)
        if session_snrs:
            snr = float(session_snrs[snr_order[k]])
            settings["snr_range"] = (snr, snr)
        pool = _split_pool(utterances, [speaker], "synth.personal")
        if len(pool) < need["adapt"] + need["test"]:
            raise SekdError(
                f"synth.personal: speaker {speaker} has {len(pool)} utterances, adapt + test need "
                f"{need['adapt'] + need['test']}"
            )
        rng = np.random.default_rng([seed, index, PLAN_STREAM, k])
        order = rng.permutation(len(pool))
        _, source, mic = draw_rir(rng, rooms[speaker])
        noise = noises.iloc[noise_order[k]]
        picks = {"adapt": order[: need["adapt"]], "test": order[need["adapt"] :][: need["test"]]}
        for set_name, rows in picks.items():
            for j, row in enumerate(rows):
                utt = pool.iloc[row]
                mix_id = f"{speaker}_{set_name}_{j:03d}"
                folder = f"{speaker}/{set_name}"
                jobs.append(
                    MixtureJob(
                        mix_id=mix_id,
                        split="personal",
                        speaker=speaker,
                        utterance=str(utt["utterance"]),
                        speech_path=str(utt["path"]),
                        room=rooms[speaker],
                        noise_id=str(noise["noise_id"]),
                        noise_kind=str(noise["kind"]),
                        noise_path=str(noise["path"]),
                        noise_region=PERSONAL_NOISE_REGIONS[set_name],
                        entropy=(seed, index, MIXTURE_STREAM, k, int(set_name == "test"), j),
                        noisy_rel=f"{folder}/noisy/{mix_id}.wav",
                        target_rel=f"{folder}/target/{mix_id}.wav" if set_name == "test" else "",
                        positions=(tuple(source), tuple(mic)),
                        **settings,
                    )
                )
    return jobs


def _write_personal_manifests(df: pd.DataFrame, sets: list[str], root: Path) -> pd.DataFrame:
    """Per-folder manifests (paths relative to ``<speaker>/<set>/``) and the combined one."""
    df = df.assign(set=sets)
    for (speaker, set_name), group in df.groupby(["speaker", "set"], sort=True):
        prefix = f"{speaker}/{set_name}/"
        local = group.drop(columns="set").copy()
        local["noisy"] = local["noisy"].str.removeprefix(prefix)
        local["target"] = local["target"].str.removeprefix(prefix)
        write_manifest(local, root / speaker / set_name / "manifest.csv")
    write_manifest(df, root / "manifest.csv")
    return df


def synthesize_personal(
    utterances: pd.DataFrame,
    noises: pd.DataFrame,
    speakers: list[str],
    cfg: dict,
    out_dir: Path,
    workers: int,
) -> pd.DataFrame:
    """Per test speaker: a noisy-only adaptation set and a held-out test set, one acoustic setting.

    Layout: ``<speaker>/adapt/{noisy/,manifest.csv}``,
    ``<speaker>/test/{noisy/,target/,manifest.csv}`` and ``manifest.csv`` with all of them and a
    ``set`` column (paths relative to ``out_dir``).
    """
    out_dir = Path(out_dir)
    speakers = sorted(str(s) for s in speakers)
    seed, index = int(cfg["seed"]), SPLIT_INDEX["personal"]
    timing = {}
    with WorkerPool(workers) as pool, atomic_dir(out_dir) as tmp:
        started = time.perf_counter()
        tasks = [
            ((seed, index, ROOM_STREAM, k), f"personal_{spk}", cfg)
            for k, spk in enumerate(speakers)
        ]
        rooms = dict(
            zip(speakers, pool.map(_draw_room_task, tasks, chunksize=1, desc="rooms"), strict=True)
        )
        timing["rooms"] = time.perf_counter() - started
        jobs = plan_personal(utterances, noises, speakers, cfg, rooms)
        started = time.perf_counter()
        df, timing["rir"] = _render(pool, jobs, tmp)
        timing["mixtures"] = time.perf_counter() - started
        sets = ["test" if job.target_rel else "adapt" for job in jobs]
        df = _write_personal_manifests(df, sets, tmp)
    _log_summary("personal", df, len(rooms), timing)
    return df
