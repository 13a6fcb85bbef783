# Phase 3: the teacher (DVC stage train, with phase 4). Checkpoints live outside the output folder
# (Snakemake and DVC delete outputs before a rerun), keyed by a config hash inside, so a killed job
# resumes where it stopped.


rule train_teacher:
    input:
        train=f"{DATA}/mixtures/train",
        valid=f"{DATA}/mixtures/valid",
    output:
        directory(TEACHER),
    params:
        cfg=sections("teacher"),
        checkpoints=f"{CHECKPOINTS}/teacher/{config['teacher']['name']}",
    log:
        "logs/train_teacher.log",
    benchmark:
        "logs/benchmarks/train_teacher.tsv"
    threads: 1
    priority: PRIORITY["teacher"]
    resources:
        **job_resources("train_teacher"),
        gpu=1,
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd train --config {params.cfg:q} --role teacher"
        " --train {input.train}/manifest.csv --valid {input.valid}/manifest.csv"
        " --out {output} --checkpoints {params.checkpoints} --threads {threads}"
        " --run-name teacher/{config[teacher][name]} 2> {log}"
