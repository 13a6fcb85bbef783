"""Two runs' output files compared byte for byte, except what records wall-clock time."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd


def wall_clock(name: str) -> bool:
    """A column or key that records time or the machine, which no rerun repeats."""
    return "seconds" in name or name in ("samples_per_second", "device")


def _close(a: Any, b: Any, rel: float) -> bool:
    """JSON values equal, floats to ``rel`` (relative) when it is not 0; wall-clock keys left out."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = {k for k in a if not wall_clock(k)}
        return keys == {k for k in b if not wall_clock(k)} and all(
            _close(a[k], b[k], rel) for k in keys
        )
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and rel:
        return math.isclose(a, b, rel_tol=rel, abs_tol=rel) or (math.isnan(a) and math.isnan(b))
    return a == b


def assert_same_outputs(
    got: Path, want: Path, skip: Iterable[str] = (), float_rel: float = 0.0
) -> None:
    """Every file under ``want`` is under ``got`` with the same content: CSV and JSON files compared
    without their wall-clock columns and keys, every other file byte for byte. ``skip``: glob
    patterns (relative paths) of files neither side has to match. ``float_rel``: a relative
    tolerance for JSON floats (summary statistics summed in another order), 0: exact."""
    skip = tuple(skip)

    def files(root: Path) -> list[Path]:
        found = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
        return sorted(p for p in found if not any(p.match(pattern) for pattern in skip))

    names = files(want)
    assert names == files(got)
    for name in names:
        if name.suffix == ".csv":
            a, b = pd.read_csv(got / name), pd.read_csv(want / name)
            keep = [c for c in b.columns if not wall_clock(c)]
            pd.testing.assert_frame_equal(a[keep], b[keep], obj=str(name))
        elif name.suffix == ".json":
            a, b = (json.loads((d / name).read_text()) for d in (got, want))
            assert _close(a, b, float_rel), name
        else:
            assert (got / name).read_bytes() == (want / name).read_bytes(), name
