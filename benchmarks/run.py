"""Benchmark suite: real-time factor, evaluation, synthesis, training and pipeline overhead.

Run from the repository root on a quiet machine (docs/benchmarks.md explains every figure):
    python benchmarks/run.py [--quick] [--out results/benchmarks.json] [--only SECTION ...]
                             [--demo-dir DIR]
Prints one table per section and writes every figure, with the machine it ran on, to one JSON.
``--quick`` shrinks every section to a smoke test of a minute or two (overhead is then skipped
unless --demo-dir names a finished demo) and writes results/benchmarks-quick.json by default.
Nothing in the project is written except ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sections.common import Options

BASE_ENV = dict(os.environ)  # before pinning: the pipeline subprocesses get the caller's settings
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"  # before numpy loads: one thread unless a section asks for workers

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("rtf", "eval", "synth", "train", "overhead")
MODULES = {
    "rtf": "rtf",
    "eval": "scoring",
    "synth": "synth",
    "train": "train",
    "overhead": "overhead",
}
PACKAGES = ("torch", "onnxruntime", "numpy", "pesq", "pystoi", "speechmos", "pyroomacoustics")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: results/benchmarks.json (results/benchmarks-quick.json under --quick)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--demo-dir", type=Path, default=None, help="a finished demo checkout (overhead section)"
    )
    args = parser.parse_args(argv)
    if args.out is None:  # a smoke test never overwrites the real run's figures
        args.out = REPO / "results" / ("benchmarks-quick.json" if args.quick else "benchmarks.json")
    if args.demo_dir is not None:
        args.demo_dir = args.demo_dir.resolve()
        if (
            not (args.demo_dir / "Snakefile").is_file()
            or not (args.demo_dir / "dvc.yaml").is_file()
        ):
            parser.error(f"--demo-dir {args.demo_dir}: no Snakefile and dvc.yaml there")
    return args


def _first(path: str, key: str) -> str | None:
    """The value of the first ``key: value`` line of a /proc file (None off Linux)."""
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def _git(*args: str) -> str | None:
    """Read-only git query (no optional locks: never touches the index others may be using)."""
    try:
        proc = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def machine_info() -> dict:
    """Where the figures come from: hardware, library versions, date and commit."""
    import torch

    memory = _first("/proc/meminfo", "MemTotal")
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or None,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": round(int(memory.split()[0]) / 2**20, 1) if memory else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


def summary_line(machine: dict, quick: bool) -> str:
    versions = machine["versions"]
    return (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB; torch "
        f"{versions['torch']}, onnxruntime {versions['onnxruntime']}; "
        f"{'quick' if quick else 'full'} run at commit {machine['git_commit']}"
    )


def finite(obj: object) -> object:
    """``obj`` with NaN/Inf as None, so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def run_section(name: str, options: Options) -> dict:
    """Run one section, print its tables; its JSON entry (an error is recorded, not raised)."""
    module = importlib.import_module(f"sections.{MODULES[name]}")
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    try:
        result = module.run(options)
    except Exception as err:  # one broken section must not lose the others' figures
        print(f"{name}: FAILED: {type(err).__name__}: {err}", flush=True)
        return {"error": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - start}
    for table in result.tables:
        print(table.render() + "\n", flush=True)
    return {
        "figures": result.figures,
        "tables": [t.records() for t in result.tables],
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sections.common import Options, shared_dir

    options = Options(args.quick, REPO, shared_dir(REPO), args.demo_dir, BASE_ENV)
    machine = machine_info()
    print(summary_line(machine, args.quick), flush=True)
    sections = {name: run_section(name, options) for name in args.only or SECTIONS}
    report = {"machine": machine, "quick": args.quick, "command": sys.argv, "sections": sections}
    from sekd.io import write_text

    write_text(args.out, json.dumps(finite(report), indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if any("error" in s for s in sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
