"""Mixture manifests: one CSV row per mixture, audio paths relative to the manifest's folder.

Relative paths keep a data folder relocatable (DVC checkout, copying to a cluster); readers get
absolute paths back from :func:`read_manifest`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sekd.errors import SekdError
from sekd.io import atomic_path, read_table

MANIFEST_COLUMNS = [
    "id",
    "split",
    "speaker",
    "utterance",
    "noisy",
    "target",
    "seconds",
    "room_id",
    "room_l",
    "room_w",
    "room_h",
    "rt60_target",
    "rt60_measured",
    "drr_db",
    "snr_db",
    "noise_id",
    "noise_kind",
    "target_kind",
]
TEXT_COLUMNS = ["id", "split", "speaker", "utterance", "noisy", "target", "room_id", "noise_id"]


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest: ``noisy``/``target`` become absolute paths, an empty ``target`` is None."""
    path = Path(path)
    df = read_table(path, MANIFEST_COLUMNS, TEXT_COLUMNS, "manifest")
    root = path.resolve().parent
    df["noisy"] = [str(root / p) for p in df["noisy"]]
    df["target"] = pd.Series([str(root / p) if p else None for p in df["target"]], dtype=object)
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    """Write atomically; standard columns first, extra ones (such as ``set``) after."""
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise SekdError(f"{path}: manifest to write lacks columns {', '.join(missing)}")
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    with atomic_path(path) as tmp:
        df[MANIFEST_COLUMNS + extra].to_csv(tmp, index=False, lineterminator="\n")
