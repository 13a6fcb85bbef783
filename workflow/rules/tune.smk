# Phase 5: Optuna tuning of the KD loss weights: `tune.workers` worker jobs share one study per
# method in `tune.methods` (DVC stage tune@<method>); tune_select writes the best values, which that
# method's final distillation reads (so `dvc repro` rebuilds the tuned student without retuning).
# The no-KD baseline's study (tune.nokd, its learning rate: the same budget, whenever any method is
# tuned) uses the same rules; it needs no teacher and feeds the no-KD students (DVC stage train).

TUNE_WORKERS = list(range(config["tune"]["workers"]))


def tune_priority(wildcards):
    """Workers outrank other ready jobs, and earlier studies outrank later ones, so a free core
    goes to another worker of the same study: locally, its workers then run side by side. The
    study's (cheap) selection has the same rank: left at 0, it waited behind other methods'
    students for 10 min while its own three students could not start."""
    if wildcards.method == BASELINE:  # beside the teacher: it gates the no-KD students
        return PRIORITY["nokd"] + 1
    return PRIORITY["tune"] + len(TUNE_METHODS) - TUNE_METHODS.index(wildcards.method)


def study_inputs(wildcards):
    """A study trains students on the mixtures; a KD method's also reads the teacher."""
    found = {"train": f"{DATA}/mixtures/train", "valid": f"{DATA}/mixtures/valid"}
    if wildcards.method != BASELINE:
        found["teacher"] = TEACHER
    return found


def tuned_values(wildcards):
    """A method whose params mark a key `tuned` takes that key's value from its study's best.yaml;
    the keys params give a number keep it (and then the student does not wait for the study)."""
    if tuned_keys(config, wildcards.method):
        return {"tuned": f"{RESULTS}/tune/{wildcards.method}/best.yaml"}
    return {}


rule tune_worker:
    input:
        unpack(study_inputs),
    output:
        f"{RESULTS}/tune/{{method}}/workers/{{worker}}.json",
    wildcard_constraints:
        method="|".join(TUNED) or "^$",
        worker=r"\d+",
    params:
        cfg=lambda wildcards: tune_sections(wildcards.method),
        checkpoints=f"{CHECKPOINTS}/tune/{{method}}",
        teacher=lambda wildcards, input: f"--teacher {input.teacher}" if "teacher" in input.keys() else "",
    log:
        "logs/tune/{method}/worker{worker}.log",
    benchmark:
        "logs/benchmarks/tune/{method}/worker{worker}.tsv"
    threads: 1
    priority: tune_priority
    resources:
        **job_resources("tune_worker"),
        gpu=1,
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd tune --config {params.cfg:q} --method {wildcards.method}"
        " --worker {wildcards.worker} {params.teacher}"
        " --train {input.train}/manifest.csv --valid {input.valid}/manifest.csv"
        " --checkpoints {params.checkpoints} --results {RESULTS} --threads {threads}"
        " --out {output} 2> {log}"


rule tune_select:
    input:
        expand(f"{RESULTS}/tune/{{{{method}}}}/workers/{{worker}}.json", worker=TUNE_WORKERS),
    output:
        best=f"{RESULTS}/tune/{{method}}/best.yaml",
        history=f"{RESULTS}/tune/{{method}}/history.png",
    wildcard_constraints:
        method="|".join(TUNED) or "^$",
    params:
        cfg=lambda wildcards: tune_sections(wildcards.method),
    log:
        "logs/tune/{method}/select.log",
    priority: tune_priority
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd tune-select --config {params.cfg:q} --method {wildcards.method}"
        " --results {RESULTS} --out {RESULTS}/tune/{wildcards.method} 2> {log}"


if not TUNED:

    rule baseline_not_tuned:
        """No method is tuned, so neither is the baseline: its best.yaml records params.yaml's
        values (the train stage has the same outputs either way)."""
        output:
            BASELINE_STUDY,
        params:
            cfg=tune_sections(BASELINE),
        log:
            f"logs/tune/{BASELINE}/select.log",
        conda:
            "../../envs/sekd.yaml"
        shell:
            "SEKD_RULE={rule} sekd tune-select --config {params.cfg:q} --method " + BASELINE +
            " --not-tuned --results {RESULTS} --out {RESULTS}/tune/" + BASELINE + " 2> {log}"
