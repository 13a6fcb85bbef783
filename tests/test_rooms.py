"""Shoebox rooms: calibrated RT60, position constraints, DRR."""

from __future__ import annotations

import numpy as np
import pyroomacoustics as pra
import pytest

from sekd.data import rooms
from sekd.errors import SekdError

FS = 16000
ROOM_CFG = {
    "room": {"length": [4.0, 8.0], "width": [3.0, 6.0], "height": [2.5, 3.5]},
    "rt60": [0.2, 0.7],
    "max_order": 60,
}


@pytest.mark.parametrize(
    ("dims", "target"),
    [
        ((6.0, 5.0, 3.0), 0.6),
        ((6.0, 5.0, 3.0), 0.3),
        ((4.5, 3.5, 2.7), 0.6),
        ((7.5, 4.0, 3.2), 0.3),
    ],
)
def test_calibrated_room_rirs_measure_the_target_rt60(dims, target):
    rng = np.random.default_rng(1)
    probes = [rooms.random_positions(rng, dims) for _ in range(rooms.CALIBRATION_PROBES)]
    room = rooms.calibrate_room("r", dims, target, 60, probes)
    assert abs(room.rt60_measured / target - 1) <= rooms.RT60_TOLERANCE
    # fresh positions (not the probes, no redraws): the calibration itself must hold in the room
    for _ in range(3):
        rir = rooms.compute_rir(room, *rooms.random_positions(rng, dims))
        assert abs(rooms.measure_rt60(rir) / target - 1) <= 0.2


def test_inverse_sabine_alone_misses_the_target_and_calibration_fixes_it():
    dims, target = (6.0, 5.0, 3.0), 0.6
    rng = np.random.default_rng(2)
    probes = [rooms.random_positions(rng, dims) for _ in range(rooms.CALIBRATION_PROBES)]
    room = rooms.calibrate_room("r", dims, target, 60, probes)
    sabine, _ = pra.inverse_sabine(target, list(dims))
    raw = [rooms.measure_rt60(rooms._rir(dims, sabine, room.max_order, *p, FS)) for p in probes]
    assert abs(np.median(raw) / target - 1) > 0.08  # the reason calibration exists
    assert abs(room.rt60_measured / target - 1) <= rooms.RT60_TOLERANCE
    assert room.absorption > sabine  # inverse Sabine overshoots here: more absorption needed


def test_draw_room_respects_config_ranges_and_records_targets():
    for i in range(3):
        room = rooms.draw_room(np.random.default_rng([7, i]), f"r{i}", ROOM_CFG)
        for value, key in zip(room.dims, ("length", "width", "height"), strict=True):
            low, high = ROOM_CFG["room"][key]
            assert low <= value <= high
        assert 0.2 <= room.rt60_target <= 0.7
        assert 1 <= room.max_order <= 60
        assert 0 < room.absorption <= 1


def test_draw_room_is_deterministic_per_seed():
    a = rooms.draw_room(np.random.default_rng([3, 1]), "a", ROOM_CFG)
    b = rooms.draw_room(np.random.default_rng([3, 1]), "a", ROOM_CFG)
    c = rooms.draw_room(np.random.default_rng([3, 2]), "a", ROOM_CFG)
    assert a == b
    assert a != c


def test_positions_keep_wall_margin_and_source_mic_distance():
    dims = (4.0, 3.0, 2.5)
    rng = np.random.default_rng(0)
    for _ in range(300):
        src, mic = rooms.random_positions(rng, dims)
        for p in (src, mic):
            assert np.all(p >= rooms.WALL_MARGIN_M - 1e-9)
            assert np.all(np.asarray(dims) - p >= rooms.WALL_MARGIN_M - 1e-9)
        assert np.linalg.norm(src - mic) >= rooms.MIN_SOURCE_MIC_M


def test_room_too_small_for_the_constraints_is_an_error():
    with pytest.raises(SekdError, match="synth.room"):
        rooms.random_positions(np.random.default_rng(0), (1.2, 1.2, 1.2))


def test_drr_of_a_known_response():
    rir = np.zeros(4000)
    rir[100] = 1.0  # direct path: energy 1
    rir[2000:2010] = np.sqrt(0.1)  # late energy 10 * 0.1 = 1 -> DRR 0 dB
    assert rooms.direct_path_index(rir) == 100
    assert rooms.drr_db(rir) == pytest.approx(0.0, abs=1e-9)
    rir[2000:2010] = np.sqrt(0.01)  # late energy 0.1 -> +10 dB
    assert rooms.drr_db(rir) == pytest.approx(10.0, abs=1e-9)


def test_drr_falls_with_distance_and_direct_path_matches_geometry():
    room = rooms.calibrate_room(
        "r", (6.0, 5.0, 3.0), 0.5, 60, [(np.array([1.0, 1.2, 1.5]), np.array([4.5, 3.5, 1.2]))]
    )
    src = np.array([1.3, 1.9, 1.6])
    near = rooms.compute_rir(room, src, src + [1.0, 0.2, -0.3])
    far = rooms.compute_rir(room, src, src + [4.0, 0.2, -0.3])
    assert rooms.drr_db(near) > rooms.drr_db(far) + 6
    # pyroomacoustics delays everything by half its fractional-delay filter
    delay = pra.constants.get("frac_delay_length") // 2
    distance = np.linalg.norm([4.0, 0.2, -0.3])
    assert abs(rooms.direct_path_index(far) - (delay + distance / pra.constants.get("c") * FS)) <= 1


def test_direct_path_is_the_first_arrival_even_when_a_reflection_is_stronger():
    rir = np.zeros(2000)
    rir[300:303] = [0.3, 1.0, 0.3]  # direct path
    rir[340] = 1.6  # two coincident reflections
    assert rooms.direct_path_index(rir) == 301


def test_draw_rir_returns_an_rir_within_tolerance_of_the_target():
    room = rooms.draw_room(np.random.default_rng([5, 0]), "r", ROOM_CFG)
    rng = np.random.default_rng(9)
    for _ in range(4):
        rir, src, mic = rooms.draw_rir(rng, room)
        assert abs(rooms.measure_rt60(rir) / room.rt60_target - 1) <= rooms.RT60_ACCEPT
        assert np.array_equal(rir, rooms.compute_rir(room, src, mic))  # deterministic RIR
