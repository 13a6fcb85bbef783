"""A full disk: one line naming the path and saying so, no partial output, and a rerun after space
is freed completes. The disk is a real tmpfs of a few hundred kB, mounted for the test (root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sekd.engine.state import write_checkpoint
from sekd.errors import SekdError
from sekd.io import write_audio, write_json

SMALL = "256k"


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of ``SMALL`` bytes at ``tmp_path/disk``; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (CI runs as root): the disk-full test did not run")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(disk)]
    refused = subprocess.run(mount, capture_output=True, text=True)
    if refused.returncode != 0:  # a container without CAP_SYS_ADMIN: say so
        pytest.fail(f"mount refused: {refused.stderr.strip()}: the disk-full test did not run")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _leftovers(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def test_writers_say_the_disk_is_full_with_the_path_and_leave_nothing(small_disk):
    too_big = np.zeros(16000 * 10, np.float32)  # 10 s of 24-bit WAV: 480 kB
    with pytest.raises(SekdError, match=r"disk/a\.wav: disk full") as err:
        write_audio(small_disk / "a.wav", too_big)  # libsndfile: "System error."
    assert "\n" not in str(err.value)
    with pytest.raises(SekdError, match=r"disk/state\.pt: disk full"):
        write_checkpoint(small_disk / "state.pt", {"w": torch.zeros(200_000)})  # torch's zip writer
    with pytest.raises(SekdError, match=r"disk/big\.json: disk full"):
        write_json(small_disk / "big.json", {"x": "y" * 400_000})
    assert _leftovers(small_disk) == []  # no temporary file stays behind


def _demo_corpus_command(out: Path) -> list[str]:
    corpus = {
        "source": "demo",
        "demo": {"speakers": 4, "utterances_per_speaker": 4, "words": [6, 9], "seed": 0},
        "folder": {
            "root": None,
            "extensions": ["wav"],
            "min_utterances": 1,
            "max_utterances": None,
        },
    }
    config = json.dumps({"corpus": corpus})
    return [sys.executable, "-m", "sekd.cli", "corpus", "--config", config, "--out", str(out)]


def test_a_step_on_a_full_disk_fails_in_one_line_and_completes_after_space_is_freed(small_disk):
    out = small_disk / "corpus"
    failed = subprocess.run(_demo_corpus_command(out), capture_output=True, text=True)
    errors = [line for line in failed.stderr.splitlines() if "error" in line.lower()]
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert errors == [
        f"sekd corpus: error: {out}: disk full: no space left on its device; free some and rerun"
    ], failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    assert _leftovers(small_disk) == []  # neither the folder nor its temporary sibling
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    rerun = subprocess.run(_demo_corpus_command(out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(list(out.rglob("*.wav"))) == 16
