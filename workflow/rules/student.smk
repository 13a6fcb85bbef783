# Phase 4: the no-KD student baseline (DVC stage train, with phase 3), trained on the task loss
# only, one job per seed. It is the reference every distillation method is compared against, and
# is tuned like them: it trains with its study's best learning rate (tune.nokd; rules in tune.smk).


rule train_student_nokd:
    input:
        train=f"{DATA}/mixtures/train",
        valid=f"{DATA}/mixtures/valid",
        tuned=BASELINE_STUDY,
    output:
        directory(student_dir("nokd", "{seed}")),
    params:
        cfg=sections("student"),
        checkpoints=f"{CHECKPOINTS}/students/nokd/{{seed}}",
    log:
        "logs/train_student_nokd/{seed}.log",
    benchmark:
        "logs/benchmarks/train_student_nokd/{seed}.tsv"
    threads: 1
    priority: PRIORITY["nokd"]
    resources:
        **job_resources("train_student_nokd"),
        gpu=1,
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd train --config {params.cfg:q} --role student"
        " --seed {wildcards.seed} --train {input.train}/manifest.csv --valid {input.valid}/manifest.csv"
        " --out {output} --checkpoints {params.checkpoints} --threads {threads}"
        " --tuned {input.tuned} --phase distill --run-name distill/nokd/seed{wildcards.seed} 2> {log}"
