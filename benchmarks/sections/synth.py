"""Synthesis throughput per core and where a mixture's time goes.

Measured in this process with CPU time (``synth`` runs one such process per core, so per-core
figures scale with the worker count): room calibration (``draw_room``, once per room), a plain
image-source RIR (``compute_rir``), and ``render_mixture`` end to end. The mixture is then taken
apart stage by stage as ``render_mixture`` runs them: the RIR draw (positions redrawn until the RT60
fits), reading the speech, convolution and mixing, the manifest's RT60/DRR measurements, and
writing the two WAVs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sekd.data.mixing import NOISE_REGIONS, make_target, mix, noise_segment, reverberate
from sekd.data.noise import coloured_noise
from sekd.data.rooms import (
    Room,
    compute_rir,
    draw_rir,
    draw_room,
    drr_db,
    measure_rt60,
    random_positions,
)
from sekd.data.synth import MixtureJob, render_mixture
from sekd.io import SAMPLE_RATE, read_audio, write_audio

from .common import Options, Result, Table, cpu_timed, params, reference_speech

STAGES = ("rir", "read", "mix", "measure", "write")


def inputs(folder: Path, options: Options) -> tuple[Path, Path, str]:
    """A speech file and a 30 s pink-noise file, as the corpus and noise steps would write them."""
    speech, _, source = reference_speech(options.shared)
    noise = coloured_noise(30 * SAMPLE_RATE, 1.0, np.random.default_rng(0))
    write_audio(folder / "speech.wav", speech)
    write_audio(folder / "noise.wav", 0.5 * noise / np.abs(noise).max())
    return folder / "speech.wav", folder / "noise.wav", source


def job(cfg: dict, room: Room, index: int, speech: Path, noise: Path) -> MixtureJob:
    """A training mixture job, as ``plan_split`` builds them."""
    return MixtureJob(
        mix_id=f"b{index:04d}",
        split="train",
        speaker="s0",
        utterance="u0",
        speech_path=str(speech),
        room=room,
        noise_id="n0",
        noise_kind="pink",
        noise_path=str(noise),
        noise_region=NOISE_REGIONS["train"],
        entropy=(int(cfg["seed"]), 9, 0, index),
        noisy_rel=f"noisy/b{index:04d}.wav",
        target_rel=f"target/b{index:04d}.wav",
        target_kind=str(cfg["target"]),
        early_ms=float(cfg["early_ms"]),
        snr_range=(float(cfg["snr_db"][0]), float(cfg["snr_db"][1])),
    )


def staged(job: MixtureJob, root: Path) -> dict[str, float]:
    """``render_mixture``'s steps one by one, with the CPU seconds of each."""
    rng = np.random.default_rng(list(job.entropy))
    seconds: dict[str, float] = {}

    def stage(name: str, fn: Callable) -> object:
        out, seconds[name] = cpu_timed(fn)
        return out

    rir, _, _ = stage("rir", lambda: draw_rir(rng, job.room))
    snr = float(rng.uniform(*job.snr_range))
    speech = stage("read", lambda: read_audio(job.speech_path).astype(np.float64))
    noise = read_audio(job.noise_path)  # cached per worker in render_mixture: not counted

    def mixing() -> object:
        segment = noise_segment(noise, len(speech), job.noise_region, rng)
        target = make_target(speech, rir, job.target_kind, job.early_ms)
        return mix(reverberate(speech, rir), target, segment, snr)

    mixture = stage("mix", mixing)
    stage("measure", lambda: (measure_rt60(rir), drr_db(rir)))

    def writing() -> None:
        write_audio(root / job.noisy_rel, mixture.noisy)
        write_audio(root / job.target_rel, mixture.target)

    stage("write", writing)
    return seconds


def plain_rirs(rooms: list[Room], per_room: int) -> float:
    """CPU seconds per image-source RIR at random positions (no RT60 check)."""
    rng = np.random.default_rng(1)
    total = 0.0
    for room in rooms:
        for _ in range(per_room):
            source, mic = random_positions(rng, room.dims)
            total += cpu_timed(lambda r=room, s=source, m=mic: compute_rir(r, s, m))[1]
    return total / (len(rooms) * per_room)


def run(options: Options) -> Result:
    cfg = params(options.repo)["synth"]
    room_count, per_room = options.pick((1, 2), (6, 5))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        speech, noise, source = inputs(folder, options)
        timed_rooms = [
            cpu_timed(lambda r=r: draw_room(np.random.default_rng([cfg["seed"], 9, r]), "b", cfg))
            for r in range(room_count)
        ]
        rooms = [room for room, _ in timed_rooms]
        room_seconds = float(np.mean([s for _, s in timed_rooms]))
        rir_seconds = plain_rirs(rooms, per_room)
        jobs = [
            job(cfg, rooms[i % room_count], i, speech, noise) for i in range(per_room * room_count)
        ]
        render_mixture(jobs[0], folder / "warm")  # fills the noise cache, loads libsndfile
        mixture_seconds = float(
            np.mean([cpu_timed(lambda j=j: render_mixture(j, folder))[1] for j in jobs])
        )
        stages = [staged(j, folder / "staged") for j in jobs]
    per_stage = {name: float(np.mean([s[name] for s in stages])) for name in STAGES}
    return report(cfg, rooms, room_seconds, rir_seconds, mixture_seconds, per_stage, source)


def report(
    cfg: dict,
    rooms: list[Room],
    room_seconds: float,
    rir_seconds: float,
    mixture_seconds: float,
    stages: dict[str, float],
    source: str,
) -> Result:
    """Throughput table, stage table and the JSON figures."""
    ratio = sum(cfg["rooms"].values()) / sum(cfg["mixtures"].values())
    amortised = mixture_seconds + ratio * room_seconds
    orders = sorted(room.max_order for room in rooms)
    throughput = Table(
        f"Synthesis per core (CPU time; {len(rooms)} rooms, image orders {orders})",
        ["item", "s/item", "items/s/core"],
        [
            ["room calibration", room_seconds, 1 / room_seconds],
            ["RIR (image source)", rir_seconds, 1 / rir_seconds],
            ["mixture (render_mixture)", mixture_seconds, 1 / mixture_seconds],
            [f"mixture + room share ({ratio:.3f} rooms each)", amortised, 1 / amortised],
        ],
        [f"speech: {source}; noise: synthetic pink; config: params.yaml synth"],
    )
    total = sum(stages.values())
    breakdown = Table(
        "Where a mixture's time goes",
        ["stage", "s", "share"],
        [[name, value, value / total] for name, value in stages.items()],
        [
            "rir: draw_rir (positions redrawn until the RT60 is within 20 %); read: speech WAV;",
            "mix: noise segment, target, convolution, mixing; measure: RT60 + DRR for the"
            " manifest; write: noisy + target WAVs (24-bit)",
        ],
    )
    figures = {
        "rooms": len(rooms),
        "image_orders": orders,
        "room_calibration_seconds": room_seconds,
        "rir_seconds": rir_seconds,
        "rirs_per_second_per_core": 1 / rir_seconds,
        "mixture_seconds": mixture_seconds,
        "mixtures_per_second_per_core": 1 / mixture_seconds,
        "mixtures_per_second_per_core_with_rooms": 1 / amortised,
        "stage_seconds": stages,
        "speech": source,
    }
    return Result(figures, [throughput, breakdown])
