# Phase 8: zero-shot personalisation. For each held-out test speaker, the student named by
# adapt.student is fine-tuned on the speaker's noisy adaptation set with the frozen teacher's outputs
# as targets, then teacher, un-adapted and personalised student are scored on the speaker's
# held-out test set. The speakers are known once synthesis has run (a checkpoint). A speaker's three
# scorings are one job (one process: imports, test audio and scoring workers shared), which waits
# for the speaker's adaptation; the two jobs form one group, so a cluster gets one job per speaker
# (the adaptation, then the scorings) asking for one GPU. (Merging several speakers into one job
# would make Snakemake add up their GPU requests.)

ADAPT_ROLES = ["teacher", "unadapted", "personalised"]


def adapt_student():
    """The folder of adapt.student (`nokd-<seed>` or `<method>-<seed>`)."""
    return systems()[config["adapt"]["student"]]


def personal_speakers():
    """Test speakers with a personal set, read from the synthesised personal manifest."""
    import pandas as pd

    folder = checkpoints.synth_personal.get().output[0]
    return sorted(pd.read_csv(f"{folder}/manifest.csv")["speaker"].astype(str).unique())


def role_models(wildcards):
    """The model each personal evaluation of a speaker scores, by role."""
    return {
        "teacher": TEACHER,
        "unadapted": adapt_student(),
        "personalised": f"{MODELS}/personal/{wildcards.speaker}",
    }


def personal_systems(wildcards, output):
    """`sekd evaluate` options for a speaker's roles: system `<speaker>/<role>`, in output order."""
    models = role_models(wildcards)
    runs = zip(ADAPT_ROLES, output, strict=True)
    return evaluate_args((f"{wildcards.speaker}/{r}", models[r], out) for r, out in runs)


def personal_results(wildcards=None):
    return expand(
        f"{RESULTS}/personal/eval/{{speaker}}/{{role}}",
        speaker=personal_speakers(),
        role=ADAPT_ROLES,
    )


rule adapt:
    input:
        personal=f"{DATA}/personal",
        student=adapt_student(),
        teacher=TEACHER,
    output:
        directory(f"{MODELS}/personal/{{speaker}}"),
    params:
        cfg=sections("adapt"),
        checkpoints=f"{CHECKPOINTS}/personal/{{speaker}}",
    log:
        "logs/adapt/{speaker}.log",
    benchmark:
        "logs/benchmarks/adapt/{speaker}.tsv"
    group:
        "personal"
    threads: 1
    resources:
        **job_resources("adapt"),
        gpu=1,
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd adapt --config {params.cfg:q} --speaker {wildcards.speaker}"
        " --student {input.student} --teacher {input.teacher}"
        " --manifest {input.personal}/{wildcards.speaker}/adapt/manifest.csv"
        " --out {output} --checkpoints {params.checkpoints} --threads {threads} 2> {log}"


rule evaluate_personal:
    input:
        personal=f"{DATA}/personal",
        models=lambda wildcards: list(role_models(wildcards).values()),
    output:
        [directory(f"{RESULTS}/personal/eval/{{speaker}}/{role}") for role in ADAPT_ROLES],
    params:
        cfg=sections("evaluate"),
        systems=personal_systems,
    log:
        "logs/evaluate_personal/{speaker}.log",
    benchmark:
        "logs/benchmarks/evaluate_personal/{speaker}.tsv"
    group:
        "personal"
    threads: 1
    resources:
        **job_resources("evaluate_personal", per=len(ADAPT_ROLES)),
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd evaluate --config {params.cfg:q} {params.systems}"
        " --manifest {input.personal}/{wildcards.speaker}/test/manifest.csv"
        " --workers {threads} --phase adapt 2> {log}"


rule personal_table:
    input:
        results=personal_results,
        teacher=TEACHER,  # static inputs, so the DAG names them before the speakers are known
        student=adapt_student(),
    output:
        **{name: f"{RESULTS}/personal/{name}" for name in PERSONAL_TABLE},
    log:
        "logs/personal_table.log",
    conda:
        "../../envs/sekd.yaml"
    shell:
        "sekd personal-table --out {RESULTS}/personal {input.results} 2> {log}"
