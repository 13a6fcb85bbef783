# Phase 3: distilled students, one job per method x seed, all with the student architecture, data
# and epochs of the no-KD baseline and the same frozen teacher.


rule distill:
    input:
        train=f"{DATA}/mixtures/train",
        valid=f"{DATA}/mixtures/valid",
        teacher=TEACHER,
    output:
        directory(student_dir("{method}", "{seed}")),
    wildcard_constraints:
        method="|".join(DISTILL_METHODS) or "^$",
        seed=r"\d+",
    params:
        cfg=lambda wildcards: distill_sections(wildcards.method),
        checkpoints=f"{CHECKPOINTS}/students/{{method}}/{{seed}}",
    log:
        "logs/distill/{method}/{seed}.log",
    benchmark:
        "logs/benchmarks/distill/{method}/{seed}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd distill --config {params.cfg:q} --method {wildcards.method}"
        " --seed {wildcards.seed} --teacher {input.teacher}"
        " --train {input.train}/manifest.csv --valid {input.valid}/manifest.csv"
        " --out {output} --checkpoints {params.checkpoints} --threads {threads} 2> {log}"
