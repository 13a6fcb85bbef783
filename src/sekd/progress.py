"""Progress bars for the steps that take more than a few seconds (synthesis, epochs, scoring)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> tqdm:
    """``iterable`` with a bar on stderr when stderr is a terminal, and silent otherwise.

    Workflow rules send stderr to ``logs/<rule>.log`` and SLURM to a file, so their logs stay free
    of bar redraws; a user running ``sekd`` by hand sees the bar.
    """
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        leave=False,
        mininterval=0.5,
        disable=not sys.stderr.isatty(),
        file=sys.stderr,
    )
