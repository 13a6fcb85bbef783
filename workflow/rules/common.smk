# Shared helpers: config validation, paths derived from params (defined once, here), and the JSON
# config each rule hands to `sekd`.
import json
import os

from snakemake.exceptions import WorkflowError

from sekd.errors import SekdError

from sekd.config import (
    BASELINE,
    DEFAULT_PARAMS,
    deep_merge,
    read_config_file,
    searched_as_tuned,
    tuned_keys,
    tuned_studies,
    validate_params,
)


def _sekd_merged_config():
    """params.yaml, then --configfile's files, then --config, each read as plain YAML (no YTE: a
    file marked `__use_yte__` is refused) and merged with sekd's merge, where a model given with
    name and conf replaces the earlier one (a Conv-TasNet setting over params.yaml's GRU).

    Snakemake itself has already read --configfile's files with its own loader by now (README:
    "Config files are data"); params.yaml, which `dvc repro` uses, only sekd reads."""
    merged = {}
    for path in _config_files:
        merged = deep_merge(merged, read_config_file(path))
    return deep_merge(merged, dict(workflow.config_settings.config or {}))


_config_files = [DEFAULT_PARAMS, *(workflow.overwrite_configfiles or ())]
try:
    _merged = _sekd_merged_config()
    validate_params(_merged, source="snakemake config", files=_config_files)
except SekdError as err:
    raise WorkflowError(str(err)) from None
config.clear()
config.update(_merged)

if config["tracking"]["uri"]:
    os.environ.setdefault("MLFLOW_TRACKING_URI", config["tracking"]["uri"])
os.environ.setdefault("SEKD_EXPERIMENT_PREFIX", config["tracking"]["experiment_prefix"])
os.environ.setdefault("SEKD_ROOT", workflow.basedir)

DATA = config["paths"]["data"]
MODELS = config["paths"]["models"]
RESULTS = config["paths"]["results"]
CHECKPOINTS = config["paths"]["checkpoints"]
SPLITS = ["train", "valid", "test"]
TEACHER = f"{MODELS}/teacher/{config['teacher']['name']}"
STUDENT_SEEDS = config["student"]["seeds"]
# The method lists come from params only (no rule names a method): a new method is its module,
# its params section and its schema entry.
DISTILL_METHODS = config["distill"]["methods"]
DISTILL_SEEDS = config["distill"]["seeds"]
TUNE_METHODS = config["tune"]["methods"]
# Every study: each method of tune.methods and, when there is one, the no-KD baseline's (its
# learning rate, tune.nokd), with the same budget; the baseline's runs in the train stage.
TUNED = tuned_studies(config["tune"])


def sections(*names):
    """The JSON `--config` argument holding only these config sections (a rule's rerun trigger)."""
    return json.dumps({name: config[name] for name in names}, sort_keys=True)


def distill_sections(method):
    """A method's rule reruns when its own weights, the student or the teacher change, not others'."""
    picked = {
        "student": config["student"],
        "distill": {
            method: config["distill"][method],
            "cache_teacher": config["distill"]["cache_teacher"],
        },
    }
    return json.dumps(picked, sort_keys=True)


def tune_sections(method):
    """A study depends on its method's config (none for the baseline), the student and the
    tuning settings, not on other methods' search spaces."""
    others = {*TUNED, "methods"} - {method}  # the workflow, not the job, decides which studies run
    picked = {
        "student": config["student"],
        "tune": {key: value for key, value in config["tune"].items() if key not in others},
    }
    if method != BASELINE:  # the keys the study searches are its own: a value given there is not
        picked["distill"] = {  # a reason to retune (the final student takes it instead)
            method: searched_as_tuned(config, method),
            "cache_teacher": config["distill"]["cache_teacher"],
        }
    return json.dumps(picked, sort_keys=True)


def job_cores(wanted=None):
    """Threads of a job that spreads its files over processes: ``wanted`` (None: all), at most the
    local cores. On a cluster there is no --cores: ``wanted`` or 1, which the SLURM profile raises
    for synthesis with set-threads (site key cpus_for_synthesis)."""
    try:
        available = workflow.cores
    except WorkflowError:
        return wanted or 1
    return min(wanted or available, available)


def job_resources(rule, per=1, cores=None):
    """A job's cluster request, from params' `resources.<rule>` (`resources.distill_<method>` for one
    method's students, where given): memory and runtime times the attempt (a job killed for running
    out of either gets more on its retry; the SLURM profile retries twice) and the runtime times
    `per` (the systems one evaluation job scores). Cores: `cores` (a config value, so `-n` shows
    what a job will ask), else the job's threads; the profile sets GPU and synthesis jobs' own."""

    def wanted(wildcards):
        table = config["resources"]
        method = getattr(wildcards, "method", None)
        return table.get(f"{rule}_{method}", table[rule]) if method else table[rule]

    return {
        "mem_mb": lambda wildcards, attempt: wanted(wildcards)["mem_mb"] * attempt,
        "runtime": lambda wildcards, attempt: wanted(wildcards)["runtime"] * per * attempt,
        "cpus_per_task": cores or (lambda wildcards, threads: threads),
    }


def student_dir(method, seed):
    return f"{MODELS}/students/{method}/{seed}"


def evaluate_args(runs):
    """`sekd evaluate` options that score several systems in one process: `--system <name>
    --model <folder> --out <folder>` for each (name, model folder or None: the noisy input, out
    folder)."""
    return " ".join(
        f"--system {name} --model {model or '-'} --out {out}" for name, model, out in runs
    )


def systems():
    """Evaluated systems: the noisy input, the teacher and every student, name -> model folder."""
    found = {"noisy": None, "teacher": TEACHER}
    found.update({f"nokd-{seed}": student_dir("nokd", seed) for seed in STUDENT_SEEDS})
    for method in DISTILL_METHODS:
        found.update({f"{method}-{seed}": student_dir(method, seed) for seed in DISTILL_SEEDS})
    return found


# Local scheduling: Snakemake starts the ready job of highest priority first. Jobs that others wait
# on go first (synthesis takes every core and feeds everything; the teacher is the longest job and
# gates all KD; the no-KD students gate adaptation and the methods with `init: nokd`; a tuning study
# gates its method's students), evaluations (leaves: a method's seeds, or a speaker's three roles,
# in one job) last, so a run ends on jobs that nothing waits for.
PRIORITY = {"synth": 100, "teacher": 50, "nokd": 40, "tune": 10, "distill": 5}
BASELINE_STUDY = f"{RESULTS}/tune/{BASELINE}/best.yaml"  # tuned or not, the baseline's values


PHASES = ["corpus", "synth", "train", "tune", "distill", "evaluate", "adapt", "report"]
# Phases that DVC splits into one `foreach` stage per method (`<phase>@<method>`, running the target
# `phase_<phase>_<method>` that the Snakefile defines for each method of these lists).
PER_METHOD_PHASES = {"tune": TUNE_METHODS, "distill": DISTILL_METHODS}
PERSONAL_TABLE = ["metrics.json", "table.md", "table.csv", "gains.png"]


def phase_outputs(phase, method=None):
    """Outputs owned by each phase (= DVC stage outs); ``method``: only that method's share of a
    per-method phase (= the outs of DVC stage ``<phase>@<method>``)."""
    if method is not None:
        return {
            "tune": [f"{RESULTS}/tune/{method}/{name}" for name in ("best.yaml", "history.png")],
            "distill": [student_dir(method, seed) for seed in DISTILL_SEEDS],
        }[phase]
    outputs = {
        "corpus": [f"{DATA}/corpus", f"{DATA}/noise"],
        "synth": [*(f"{DATA}/mixtures/{split}" for split in SPLITS), f"{DATA}/personal"],
        # the teacher and the no-KD baselines learn from labels alone: one stage, so DVC runs the
        # students beside the teacher instead of leaving a core idle behind it
        "train": [TEACHER, *(student_dir("nokd", seed) for seed in STUDENT_SEEDS), BASELINE_STUDY],
        "tune": [path for m in TUNE_METHODS for path in phase_outputs("tune", m)],
        "distill": [path for m in DISTILL_METHODS for path in phase_outputs("distill", m)],
        "evaluate": [
            *(f"{RESULTS}/eval/{name}" for name in systems()),
            *(
                f"{RESULTS}/{name}"
                for name in ("metrics.json", "methods.json", "table.md", "table.csv")
            ),
        ],
        "adapt": [f"{RESULTS}/personal/{name}" for name in PERSONAL_TABLE],
        "report": [f"{RESULTS}/report/index.html"],
    }
    return outputs[phase]

