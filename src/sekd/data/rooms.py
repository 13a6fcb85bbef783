"""Random shoebox rooms with image-source RIRs whose measured RT60 matches the drawn target.

Inverse Sabine gives an absorption for a target RT60, but the image-source RIR it produces does not
measure at that RT60: with a high image order the decay is longer than Sabine predicts (0.6 s target
measured 0.78 s in a 6x5x3 m room), and with an order cap the late tail is missing so the decay is
shorter. Each room is therefore calibrated once: the RT60 of probe RIRs is measured and the
absorption is re-derived from a corrected target until the measurement is within tolerance. Rooms
are shared by several mixtures so this cost is paid once per room; each mixture only computes its
own RIR.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pyroomacoustics as pra
from pyroomacoustics.experimental import measure_rt60 as pra_measure_rt60

from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE

WALL_MARGIN_M = 0.5  # source and microphone stay at least this far from every wall
MIN_SOURCE_MIC_M = 1.0  # minimum source-microphone distance
SOURCE_HEIGHT_M = (1.2, 1.9)  # talker mouth height, clipped to the room
MIC_HEIGHT_M = (0.7, 1.6)  # device on a table/desk to head height, clipped to the room
DIRECT_WINDOW_MS = 2.5  # half width of the direct-path window used for the DRR
DIRECT_THRESHOLD = 0.3  # first tap above this fraction of the peak starts the direct path
RT60_DECAY_DB = 20  # T20: fit -5..-25 dB of the Schroeder decay, extrapolated to 60 dB
RT60_TOLERANCE = 0.05  # calibration stops once |measured/target - 1| is below this
RT60_ACCEPT = 0.20  # a mixture's RIR must measure within this of the target (else new positions)
POSITION_TRIES = 8  # position draws per mixture before the closest RIR is taken
CALIBRATION_STEPS = 4  # absorption updates at most (each costs one RIR per probe)
CALIBRATION_PROBES = 3  # source-mic pairs whose median RT60 calibrates a room
MIN_ABSORPTION = 0.01  # floor for the calibrated absorption (keeps the ISM decaying)
# Image order per room: this fraction of the order inverse Sabine asks for (which reaches the full
# 60 dB decay); half covers about 30 dB, all that T20 needs, at an eighth of the image count.
ORDER_FRACTION = 0.5


@dataclass(frozen=True)
class Room:
    """A calibrated shoebox room: everything needed to compute RIRs in it, picklable and small."""

    room_id: str
    dims: tuple[float, float, float]  # length, width, height in metres
    rt60_target: float  # seconds
    rt60_measured: float  # seconds, median T20 of the calibration probe RIRs
    absorption: float  # energy absorption coefficient of all surfaces after calibration
    max_order: int  # image-source order used for every RIR in this room


def _uniform(rng: np.random.Generator, bounds: list[float] | tuple[float, float]) -> float:
    low, high = bounds
    return float(rng.uniform(low, high))


def measure_rt60(rir: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """RT60 by Schroeder backward integration, T20 extrapolated to 60 dB.

    T20 rather than a full 60 dB fit: an image-source RIR with an order cap loses its late tail,
    which bends the end of the decay curve down; the -5..-25 dB range stays clear of that bend.
    """
    return float(pra_measure_rt60(rir, fs=sample_rate, decay_db=RT60_DECAY_DB))


def direct_path_index(rir: np.ndarray, sample_rate: int = SAMPLE_RATE) -> int:
    """Sample index of the direct-path peak: the first strong arrival, not simply the strongest tap.

    Two reflections arriving together (source and mic at equal heights) can outweigh a distant
    direct path; the direct path is the local maximum after the first tap above 30% of the peak.
    """
    magnitude = np.abs(rir)
    first = int(np.argmax(magnitude >= DIRECT_THRESHOLD * magnitude.max()))
    window = magnitude[first : first + int(sample_rate * 1e-3)]  # its fractional-delay main lobe
    return first + int(np.argmax(window))


def drr_db(rir: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Direct-to-reverberant ratio: energy within +-2.5 ms of the direct peak vs all the rest."""
    peak = direct_path_index(rir, sample_rate)
    half = int(round(DIRECT_WINDOW_MS * 1e-3 * sample_rate))
    energy = rir.astype(np.float64) ** 2
    direct = energy[max(peak - half, 0) : peak + half + 1].sum()
    rest = energy.sum() - direct
    return float(10 * np.log10(direct / max(rest, 1e-20)))


def random_positions(
    rng: np.random.Generator, dims: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Source and microphone >= 0.5 m from every wall and >= 1 m apart (rejection sampling)."""
    length, width, height = dims
    top = height - WALL_MARGIN_M
    src_z = (min(SOURCE_HEIGHT_M[0], top), min(SOURCE_HEIGHT_M[1], top))
    mic_z = (min(MIC_HEIGHT_M[0], top), min(MIC_HEIGHT_M[1], top))
    low_xy = (WALL_MARGIN_M, WALL_MARGIN_M)
    high_xy = (length - WALL_MARGIN_M, width - WALL_MARGIN_M)
    for _ in range(1000):
        src = np.array([*rng.uniform(low_xy, high_xy), rng.uniform(*src_z)])
        mic = np.array([*rng.uniform(low_xy, high_xy), rng.uniform(*mic_z)])
        if np.linalg.norm(src - mic) >= MIN_SOURCE_MIC_M:
            return src, mic
    raise SekdError(f"synth.room: room {dims} too small for a {MIN_SOURCE_MIC_M} m source-mic gap")


def compute_rir(
    room: Room, source: np.ndarray, mic: np.ndarray, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Image-source RIR (float64) from ``source`` to ``mic`` in ``room``.

    pyroomacoustics builds the fractional delays with several threads by default; one thread keeps
    the result byte-identical whatever the machine (parallelism comes from the process pool).
    """
    return _rir(room.dims, room.absorption, room.max_order, source, mic, sample_rate)


def draw_rir(
    rng: np.random.Generator, room: Room, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random source/mic positions and their RIR, measuring within 20% of the room's target RT60.

    The decay measured in a calibrated room still varies with position (a few % of positions fall
    outside 20%, mostly in long rooms with strong absorption), so such positions are redrawn; after
    8 tries the closest one is kept. Returns ``(rir, source, mic)``.
    """
    best: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
    for _ in range(POSITION_TRIES):
        source, mic = random_positions(rng, room.dims)
        rir = compute_rir(room, source, mic, sample_rate)
        error = abs(measure_rt60(rir, sample_rate) / room.rt60_target - 1.0)
        if best is None or error < best[0]:
            best = (error, rir, source, mic)
        if error <= RT60_ACCEPT:
            break
    return best[1], best[2], best[3]


def _rir(dims, absorption, max_order, source, mic, sample_rate) -> np.ndarray:
    pra.constants.set("num_threads", 1)
    shoebox = pra.ShoeBox(
        list(dims), fs=sample_rate, materials=pra.Material(absorption), max_order=max_order
    )
    shoebox.add_source(list(source))
    shoebox.add_microphone(np.asarray(mic, dtype=float)[:, None])
    shoebox.compute_rir()
    return np.asarray(shoebox.rir[0][0], dtype=np.float64)


def _absorption(rt60: float, dims: tuple[float, float, float]) -> float:
    """Inverse Sabine absorption; a target too short for the room (absorption > 1) gives 1."""
    try:
        absorption, _ = pra.inverse_sabine(rt60, list(dims))
    except ValueError:
        absorption = 1.0
    return float(np.clip(absorption, MIN_ABSORPTION, 1.0))


def image_order(rt60: float, dims: tuple[float, float, float], cap: int) -> int:
    """``ORDER_FRACTION`` of the order that reaches ``c * rt60`` in every direction, capped.

    Same geometry as ``pra.inverse_sabine`` (largest sphere inside the order-N diamond of images).
    """
    radius = min(a * b / math.hypot(a, b) for a, b in itertools.combinations(dims, 2))
    full = math.ceil(pra.constants.get("c") * rt60 / radius - 1)
    return max(1, min(int(cap), math.ceil(ORDER_FRACTION * full)))


def calibrate_room(
    room_id: str,
    dims: tuple[float, float, float],
    rt60_target: float,
    max_order_cap: int,
    probes: list[tuple[np.ndarray, np.ndarray]],
    sample_rate: int = SAMPLE_RATE,
) -> Room:
    """Find the absorption whose probe RIRs measure ``rt60_target`` (median within 5%).

    Fixed-point update of the RT60 handed to inverse Sabine: sabine *= target / measured (at most
    4 updates). The best candidate seen is kept, so a room that cannot reach the tolerance is still
    as close as possible. The image order is fixed per room from the target, so every RIR in it
    costs the same. Several probes, because the measured RT60 varies by about 10% with position.
    """
    max_order = image_order(rt60_target, dims, max_order_cap)
    sabine_target = rt60_target
    best: tuple[float, float, float] | None = None  # (error, absorption, measured)
    for _ in range(CALIBRATION_STEPS + 1):
        absorption = _absorption(sabine_target, dims)
        rirs = [_rir(dims, absorption, max_order, src, mic, sample_rate) for src, mic in probes]
        measured = float(np.median([measure_rt60(rir, sample_rate) for rir in rirs]))
        error = abs(measured / rt60_target - 1.0)
        if best is None or error < best[0]:
            best = (error, absorption, measured)
        if error <= RT60_TOLERANCE or measured <= 0:
            break
        sabine_target *= rt60_target / measured
    _, absorption, measured = best
    return Room(room_id, dims, rt60_target, measured, absorption, max_order)


def draw_room(
    rng: np.random.Generator, room_id: str, cfg: dict, sample_rate: int = SAMPLE_RATE
) -> Room:
    """Draw dimensions and a target RT60 (``synth.room``, ``synth.rt60``) and calibrate the room."""
    room_cfg = cfg["room"]
    dims = (
        _uniform(rng, room_cfg["length"]),
        _uniform(rng, room_cfg["width"]),
        _uniform(rng, room_cfg["height"]),
    )
    dims = tuple(round(d, 3) for d in dims)
    rt60_target = round(_uniform(rng, cfg["rt60"]), 4)
    probes = [random_positions(rng, dims) for _ in range(CALIBRATION_PROBES)]
    return calibrate_room(room_id, dims, rt60_target, int(cfg["max_order"]), probes, sample_rate)
