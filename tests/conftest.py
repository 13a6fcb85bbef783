"""Shared fixtures. Reference audio comes from ../shared/testdata (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def shared_testdata_dir() -> Path:
    return Path(os.environ.get("SEKD_SHARED", REPO.parent / "shared")) / "testdata"


@pytest.fixture(scope="session")
def shared_testdata() -> Path:
    """../shared/testdata: skipped with a reason when absent, a failure when SEKD_REQUIRE_SHARED=1."""
    folder = shared_testdata_dir()
    if not folder.is_dir():
        message = f"reference data folder {folder} not found (set SEKD_SHARED to its parent)"
        if os.environ.get("SEKD_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def pesq_pair(shared_testdata: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``pesq`` package's reference pair (16 kHz): clean speech and babble at 0 dB, float64."""
    folder = shared_testdata / "pesq"
    clean, _ = sf.read(folder / "speech.wav")
    noisy, _ = sf.read(folder / "speech_bab_0dB.wav")
    return clean, noisy
