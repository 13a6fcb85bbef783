"""Benchmark: personalise the demo's no-KD student for one speaker on one CPU thread.

Run after the demo pipeline (it reads data/personal, the teacher and the student from params.yaml's
paths):  python benchmarks/adapt_speaker.py [--speaker s05] [--student nokd-0]
Prints the wall time of the whole adaptation (teacher pseudo-targets, epochs, guard) and where it
goes; the target is under 60 s for the 2x32 student (issue 4). Nothing is written to the project.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SEKD_TRACKING", "off")
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"


def main() -> None:
    import pandas as pd

    from sekd.adapt import adapt_speaker
    from sekd.config import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--speaker", default=None, help="default: the first personal speaker")
    parser.add_argument("--student", default=None, help="default: adapt.student")
    args = parser.parse_args()
    cfg = load_params(args.params)
    paths = cfg["paths"]
    student = args.student or cfg["adapt"]["student"]
    method, _, seed = student.rpartition("-")
    personal = Path(paths["data"]) / "personal"
    if not (personal / "manifest.csv").is_file():
        raise SystemExit(f"{personal}/manifest.csv not found: run the demo pipeline first")
    speaker = args.speaker or sorted(pd.read_csv(personal / "manifest.csv")["speaker"])[0]
    start = time.perf_counter()  # imports above are not counted; setup below is
    with tempfile.TemporaryDirectory() as tmp:
        metrics = adapt_speaker(
            cfg["adapt"],
            student_dir=Path(paths["models"]) / "students" / method / seed,
            teacher_dir=Path(paths["models"]) / "teacher" / cfg["teacher"]["name"],
            manifest=personal / speaker / "adapt" / "manifest.csv",
            out_dir=Path(tmp) / "out",
            checkpoint_dir=Path(tmp) / "checkpoints",
            threads=1,
        )
        history = pd.read_csv(Path(tmp) / "out" / "history.csv")
    wall = time.perf_counter() - start
    manifest = pd.read_csv(personal / speaker / "adapt" / "manifest.csv")
    adapted = len(manifest) - int(cfg["adapt"]["valid_utterances"])
    epochs = float(history["seconds"].sum())
    training = float((adapted / history["samples_per_second"]).sum())
    print(f"speaker {speaker}, student {student}, 1 CPU thread")
    print(f"adaptation wall time   {wall:6.1f} s  (target < 60 s)")
    print(f"epochs run             {metrics['epochs_run']:6d}    (best {metrics['best_epoch']})")
    print(f"  training steps       {training:6.1f} s")
    print(
        f"  guard                {epochs - training:6.1f} s  (held-out enhance + DNSMOS, per epoch)"
    )
    print(
        f"setup                  {wall - epochs:6.1f} s  (imports, teacher targets, epoch-0 guard)"
    )
    print(
        f"pseudo-target SI-SDR   {metrics['unadapted_pseudo_si_sdr']:.2f} -> "
        f"{metrics['best_pseudo_si_sdr']:.2f} dB; guard DNSMOS OVRL "
        f"{metrics['unadapted_dnsmos_ovrl']:.3f} -> {metrics['best_dnsmos_ovrl']:.3f}"
    )


if __name__ == "__main__":
    main()
