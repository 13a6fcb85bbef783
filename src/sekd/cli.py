"""The one command-line entry point, ``sekd <command>``: workflow rules and users call the same steps.

Each step reads its config either from params files (``--params``, later files overlay earlier ones;
validated in full) or, as the Snakemake rules do, from ``--config JSON`` holding just the sections the
step needs (validated section by section), so a rule's command changes only when its own params do.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from sekd.errors import SekdError

NO_MODEL = "-"  # `sekd evaluate --model -`: the system is the noisy input itself

log = logging.getLogger("sekd")


def _config(args: argparse.Namespace) -> dict:
    from sekd.config import load_params, validate_sections

    if args.config:
        try:
            sections = json.loads(args.config)
        except json.JSONDecodeError as err:
            raise SekdError(f"--config: invalid JSON: {err}") from None
        return validate_sections(sections)
    return load_params(*(args.params or ["params.yaml"]))


def _tracking(cfg: dict) -> dict:
    """The ``tracking`` section; rules leave it out (not a rerun trigger) and set env vars instead."""
    import os

    default = {"uri": None, "experiment_prefix": os.environ.get("SEKD_EXPERIMENT_PREFIX", "sekd")}
    return cfg.get("tracking", default)


def cmd_validate(args: argparse.Namespace) -> None:
    _config(args)
    print("config OK")


def cmd_overlay(args: argparse.Namespace) -> None:
    """Merge overlay files into params.yaml so DVC (which reads only params.yaml) sees them."""
    from sekd.config import overlay_file

    overlay_file(args.target, args.overlays)
    print(f"{args.target}: merged {', '.join(args.overlays)} (git diff shows the change)")


def cmd_plots_template(args: argparse.Namespace) -> None:
    """Write the offline HTML template that ``dvc plots show`` uses (``.dvc/config``)."""
    from sekd.dvc_plots import write_template

    print(f"{write_template(args.out)}: dvc plots show renders offline with it")


def cmd_sync(args: argparse.Namespace) -> None:
    """After ``dvc pull``/``dvc checkout``: make Snakemake's view agree with DVC's."""
    from sekd.sync import sync

    left = sync(Path(args.repo))
    if left:
        raise SekdError(f"snakemake -n still plans {left} jobs after touching (see snakemake -n)")
    print("DVC and Snakemake agree: nothing to run")


def cmd_unlock_stale(args: argparse.Namespace) -> None:
    """Before a DVC stage runs Snakemake: drop the lock of a killed run (never a live one's)."""
    from sekd.sync import unlock_stale

    unlock_stale(Path(args.repo))


def cmd_summary(args: argparse.Namespace) -> None:
    """Say where the results, models and MLflow store of a finished run are."""
    from sekd.results import summary_text

    print(summary_text(_config(args)))


def cmd_corpus(args: argparse.Namespace) -> None:
    from sekd.data.corpus import build_corpus

    table = build_corpus(_config(args)["corpus"], Path(args.out), workers=args.workers)
    log.info(
        "corpus: %d utterances of %d speakers in %s", len(table), table.speaker.nunique(), args.out
    )


def cmd_noise(args: argparse.Namespace) -> None:
    from sekd.data.corpus import assign_speakers, load_utterances
    from sekd.data.noise import babble_speech_for, build_noise

    cfg = _config(args)
    utterances = load_utterances(Path(args.corpus))
    babble = assign_speakers(sorted(utterances.speaker.unique()), cfg["split"])["babble"]
    speech = babble_speech_for(utterances, babble) if cfg["noise"]["source"] == "demo" else None
    table = build_noise(cfg["noise"], speech, Path(args.out), workers=args.workers)
    log.info("noise: %d recordings in %s", len(table), args.out)


def cmd_synth(args: argparse.Namespace) -> None:
    from sekd.data.corpus import assign_speakers, load_utterances
    from sekd.data.noise import load_noises
    from sekd.data.synth import synthesize_personal, synthesize_split

    cfg = _config(args)
    utterances = load_utterances(Path(args.corpus))
    noises = load_noises(Path(args.noise))
    speakers = assign_speakers(sorted(utterances.speaker.unique()), cfg["split"])
    out = Path(args.out)
    if args.split == "personal":
        synthesize_personal(utterances, noises, speakers["test"], cfg["synth"], out, args.workers)
    else:
        synthesize_split(
            args.split, utterances, noises, speakers[args.split], cfg["synth"], out, args.workers
        )


def cmd_train(args: argparse.Namespace) -> None:
    from sekd.engine import train_model
    from sekd.tracking import start_run, system_tags

    cfg, metadata = _config(args), None
    if args.tuned:  # the no-KD baseline's study (sekd.tune.BASELINE)
        from sekd.tune import BASELINE, apply_values, read_best, tuning_record

        best = read_best(args.tuned)
        cfg = apply_values(cfg, BASELINE, best["values"])
        metadata = {"tuning": tuning_record(best)}
    section = cfg[args.role]
    train_cfg = dict(section["train"])
    if args.seed is not None:
        train_cfg["seed"] = args.seed
    phase = args.phase or args.role
    run_name = args.run_name or f"{phase}/{Path(args.out).name}"
    system = ("teacher", None) if args.role == "teacher" else ("nokd", train_cfg["seed"])
    tags = system_tags(*system)
    with start_run(phase, run_name, None, tags, _tracking(cfg)) as tracker:
        train_model(
            model_cfg=section["model"],
            train_cfg=train_cfg,
            train_manifest=Path(args.train),
            valid_manifest=Path(args.valid),
            out_dir=Path(args.out),
            checkpoint_dir=Path(args.checkpoints),
            threads=args.threads,
            run_name=run_name,
            phase=phase,
            tracker=tracker,
            metadata=metadata,
        )


def cmd_distill(args: argparse.Namespace) -> None:
    """Train one student with one distillation method against the frozen teacher."""
    from sekd.distill import DistillJob, run_method
    from sekd.tracking import start_run, system_tags
    from sekd.tune import apply_tuned

    cfg, tuning = apply_tuned(_config(args), args.method, args.tuned)
    job = DistillJob(
        method=args.method,
        method_cfg=cfg["distill"][args.method],
        student=cfg["student"],
        seed=args.seed,
        teacher_dir=Path(args.teacher),
        train_manifest=Path(args.train),
        valid_manifest=Path(args.valid),
        out_dir=Path(args.out),
        checkpoint_dir=Path(args.checkpoints),
        threads=args.threads,
        workers=args.workers,
        init=Path(args.init) if args.init else None,
        cache_teacher=bool(cfg["distill"].get("cache_teacher", True)),
        tuning=tuning,
    )
    params = {"method": job.method, "distill": {job.method: job.method_cfg}}
    tags = system_tags(job.method, job.seed)
    with start_run("distill", job.run_name, params, tags, _tracking(cfg)) as tracker:
        run_method(job, tracker)


def cmd_tune(args: argparse.Namespace) -> None:
    """One Optuna worker: trials of the method's study until its budget is full."""
    from sekd.io import write_json
    from sekd.tune import run_worker

    cfg = _config(args)
    data = {
        "train": Path(args.train),
        "valid": Path(args.valid),
        "teacher": Path(args.teacher) if args.teacher else None,
        "checkpoints": Path(args.checkpoints),
        "results": Path(args.results),
        "threads": args.threads,
    }
    tally = run_worker(cfg, args.method, args.worker, data, _tracking(cfg))
    if args.out:
        write_json(Path(args.out), tally)


def cmd_tune_select(args: argparse.Namespace) -> None:
    from sekd.tune import select

    cfg = _config(args)
    tracking = _tracking(cfg)
    select(cfg, args.method, Path(args.results), Path(args.out), tracking, not args.not_tuned)


def cmd_adapt(args: argparse.Namespace) -> None:
    """Personalise a student on one speaker's noisy adaptation set (zero-shot: no clean speech)."""
    from sekd.adapt import adapt_speaker
    from sekd.tracking import parent_run, start_run

    cfg = _config(args)
    tracking = _tracking(cfg)
    student = cfg["adapt"]["student"]
    parent = parent_run("adapt", f"adapt/{student}", tracking)
    run_name = f"adapt/{student}/{args.speaker}"
    tags = {"sekd.speaker": args.speaker, "sekd.student": student}
    with start_run("adapt", run_name, None, tags, tracking, parent) as tracker:
        adapt_speaker(
            cfg["adapt"],
            student_dir=Path(args.student),
            teacher_dir=Path(args.teacher),
            manifest=Path(args.manifest),
            out_dir=Path(args.out),
            checkpoint_dir=Path(args.checkpoints),
            threads=args.threads,
            tracker=tracker,
        )


def cmd_personal_table(args: argparse.Namespace) -> None:
    from sekd.results import write_personal_table

    write_personal_table([Path(p) for p in args.results], Path(args.out))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from sekd.results import evaluate_systems

    cfg = _config(args)
    evaluate_systems(
        systems=_evaluated_systems(args),
        manifest=Path(args.manifest),
        options=cfg["evaluate"],
        workers=args.workers,
        tracking_cfg=_tracking(cfg),
        phase=args.phase,
    )


def _evaluated_systems(args: argparse.Namespace) -> list[tuple[str, Path | None, Path]]:
    """``(system, model folder or None, out folder)`` from the repeated --system, --model and
    --out options, matched by position; a --model of ``-``, or none at all, is the noisy input."""
    systems, models, outs = args.system, args.model or [], args.out
    if len(outs) != len(systems) or len(models) not in (0, len(systems)):
        raise SekdError(
            f"evaluate: {len(systems)} --system need as many --out ({len(outs)}) and either as "
            f"many --model or none ({len(models)})"
        )
    folders = [None if m == NO_MODEL else Path(m) for m in models] or [None] * len(systems)
    return [(s, m, Path(o)) for s, m, o in zip(systems, folders, outs, strict=True)]


def cmd_table(args: argparse.Namespace) -> None:
    from sekd.results import write_comparison

    write_comparison([Path(p) for p in args.systems], Path(args.out))


def cmd_convergence(args: argparse.Namespace) -> None:
    """Print whether each student converged (``sekd.convergence``); optionally plot the curves."""
    from sekd.convergence import convergence_markdown, convergence_table, curves_plot

    students = Path(args.students or Path(_config(args)["paths"]["models"]) / "students")
    print(convergence_markdown(convergence_table(students)))
    if args.plot:
        curves_plot(students, Path(args.plot))


def cmd_compare(args: argparse.Namespace) -> None:
    """Print the comparison of a phase's runs, read from MLflow."""
    from sekd.compare import compare_text

    cfg = _config(args)
    print(compare_text(args.phase, _tracking(cfg), args.method, args.seed, args.runs))


def cmd_report(args: argparse.Namespace) -> None:
    from sekd.report import write_report

    cfg = _config(args)
    path = write_report(Path(args.root), Path(args.out), cfg)
    print(f"report: {path}")


def cmd_enhance(args: argparse.Namespace) -> None:
    from sekd.enhance import enhance_path

    enhance_path(Path(args.input), Path(args.output), Path(args.model), stream=args.stream)


def cmd_export(args: argparse.Namespace) -> None:
    from sekd.export import export_model

    meta = export_model(Path(args.model), Path(args.out))
    worst = max(meta["max_abs_error"].values())
    graphs = "model.onnx, step.onnx" + (", frame.onnx" if meta["frame_graph"] else "")
    print(f"{args.out}: {graphs}; max abs error vs torch {worst:.2g}")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--params", action="append", help="params file(s); later ones overlay")
    group.add_argument("--config", help="JSON object of config sections (used by workflow rules)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sekd", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        _add_config_options(p)
        p.set_defaults(func=func)
        return p

    add("validate", cmd_validate, "validate the config and exit")
    add("summary", cmd_summary, "print where the results, models and MLflow store are")
    p = sub.add_parser("sync", help="after dvc pull/checkout: mark Snakemake's outputs up to date")
    p.add_argument("--repo", default=".")
    p.set_defaults(func=cmd_sync)
    p = sub.add_parser(
        "unlock-stale", help="remove the lock a killed snakemake left (not a live one's)"
    )
    p.add_argument("--repo", default=".")
    p.set_defaults(func=cmd_unlock_stale)
    p = sub.add_parser("plots-template", help="write dvc plots show's offline HTML template")
    p.add_argument("--out", default=".dvc/plots.html")
    p.set_defaults(func=cmd_plots_template)
    p = sub.add_parser("overlay", help="merge overlay YAML files into params.yaml (for dvc)")
    p.add_argument("overlays", nargs="+")
    p.add_argument("--target", default="params.yaml")
    p.set_defaults(func=cmd_overlay)
    p = add("corpus", cmd_corpus, "build the demo corpus or index a real one")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=1)
    p = add("noise", cmd_noise, "synthesise demo noises or index a noise folder")
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=1)
    p = add("synth", cmd_synth, "synthesise reverberant mixtures for one split")
    p.add_argument("--split", required=True, choices=["train", "valid", "test", "personal"])
    p.add_argument("--corpus", required=True)
    p.add_argument("--noise", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=1)
    p = add("train", cmd_train, "train a teacher or a no-KD student")
    p.add_argument("--role", required=True, choices=["teacher", "student"])
    p.add_argument("--train", required=True, help="training manifest.csv")
    p.add_argument("--valid", required=True, help="validation manifest.csv")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoints", required=True, help="folder for resumable state")
    p.add_argument("--seed", type=int, default=None, help="overrides train.seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-name", default=None)
    p.add_argument("--phase", default=None, help="MLflow phase (experiment suffix)")
    p.add_argument("--tuned", default=None, help="best.yaml of the no-KD baseline's study")
    p = add("distill", cmd_distill, "train a student with a distillation method")
    p.add_argument("--method", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--teacher", required=True, help="teacher model folder")
    p.add_argument("--train", required=True, help="training manifest.csv")
    p.add_argument("--valid", required=True, help="validation manifest.csv")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoints", required=True, help="folder for resumable state")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="metric-scoring processes (methods that score outputs, e.g. okd)",
    )
    p.add_argument(
        "--init",
        default=None,
        help="model folder to start from (methods whose config says init: nokd)",
    )
    p.add_argument(
        "--tuned",
        default=None,
        help="best.yaml of the method's study: the keys params mark 'tuned'",
    )
    p = add("tune", cmd_tune, "run one Optuna worker on a method's KD-weight study")
    p.add_argument("--method", required=True)
    p.add_argument("--worker", type=int, default=0, help="worker index (seeds its sampler)")
    p.add_argument("--teacher", default=None, help="teacher model folder (KD methods)")
    p.add_argument("--train", required=True, help="training manifest.csv")
    p.add_argument("--valid", required=True, help="validation manifest.csv")
    p.add_argument("--checkpoints", required=True, help="folder for the trials' training state")
    p.add_argument("--results", required=True, help="results folder (default journal storage)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON tally of this worker's trials")
    p = add("tune-select", cmd_tune_select, "write a study's best values and plots")
    p.add_argument("--method", required=True)
    p.add_argument("--results", required=True, help="results folder (default journal storage)")
    p.add_argument("--out", required=True, help="folder for best.yaml and the plots")
    p.add_argument(
        "--not-tuned",
        action="store_true",
        help="no study ran (the baseline when tune.methods is empty): record params.yaml's values",
    )
    p = add("evaluate", cmd_evaluate, "enhance a test set with models and score them")
    p.add_argument(
        "--system",
        action="append",
        required=True,
        help="name in tables, e.g. noisy, teacher, nokd-0 (repeat: several systems, one process)",
    )
    p.add_argument(
        "--model",
        action="append",
        help=f"model folder, one per --system in order ('{NO_MODEL}' or omit: the noisy input)",
    )
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", action="append", required=True, help="one per --system, in order")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--phase", default="evaluate", help="MLflow phase (experiment suffix)")
    p = add("table", cmd_table, "combine evaluated systems into the comparison table")
    p.add_argument("--out", required=True, help="results folder for metrics.json, table.md/csv")
    p.add_argument("systems", nargs="+", help="evaluation folders, one per system")
    p = add("adapt", cmd_adapt, "personalise a student on one speaker's noisy recordings")
    p.add_argument("--speaker", required=True)
    p.add_argument("--student", required=True, help="student model folder to start from")
    p.add_argument("--teacher", required=True, help="teacher model folder (pseudo-targets)")
    p.add_argument("--manifest", required=True, help="the speaker's noisy-only adapt manifest.csv")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoints", required=True, help="folder for resumable state")
    p.add_argument("--threads", type=int, default=1)
    p = add("personal-table", cmd_personal_table, "per-speaker personalisation table and plot")
    p.add_argument("--out", required=True, help="folder for metrics.json, table.md/csv, gains.png")
    p.add_argument("results", nargs="+", help="folders <speaker>/<role> of evaluate results")
    p = add("convergence", cmd_convergence, "did each student converge? (validation curves)")
    p.add_argument("--students", help="students folder (default: <paths.models>/students)")
    p.add_argument("--plot", help="also write the validation curves to this PNG")
    p = add("compare", cmd_compare, "compare methods' test metrics from the MLflow runs")
    p.add_argument(
        "--phase",
        default="distill",
        help="distill (with the no-KD baseline), evaluate (every system), student, teacher, adapt",
    )
    p.add_argument("--method", action="append", default=[], help="only these methods")
    p.add_argument("--seed", action="append", type=int, default=[], help="only these seeds")
    p.add_argument("--runs", action="store_true", help="one line per run instead of per method")
    p = add("report", cmd_report, "write the self-contained HTML report")
    p.add_argument("--root", default=".", help="folder holding data/, models/, results/")
    p.add_argument("--out", default="results/report", help="folder for index.html")
    p = sub.add_parser("enhance", help="enhance a noisy file or folder (.wav/.flac) with a model")
    p.add_argument("input", help="noisy audio file or folder (searched recursively)")
    p.add_argument("output", help="output folder (same relative paths, input sample rates)")
    p.add_argument("--model", required=True, help="model folder (model.yaml + weights)")
    p.add_argument("--stream", action="store_true", help="frame-by-frame (causal GRU students)")
    p.set_defaults(func=cmd_enhance)
    p = sub.add_parser("export", help="export a causal GRU student to ONNX and verify it")
    p.add_argument("--model", required=True, help="model folder (model.yaml + weights)")
    p.add_argument(
        "--out", required=True, help="folder for model.onnx, step.onnx, frame.onnx, export.json"
    )
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        args.func(args)
    except SekdError as err:
        print(f"sekd {args.command}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)  # a preempted trainer: 128 + the signal's number
    return 0


if __name__ == "__main__":
    sys.exit(main())
