# Phase 6: distilled students, one job per method x seed (DVC stage distill@<method> per method in
# distill.methods), all with the student architecture, data and epochs of the no-KD baseline and the
# same frozen teacher.


def distill_init(wildcards):
    """A method whose config says ``init: nokd`` starts from the no-KD student of its seed."""
    method_cfg = config["distill"][wildcards.method]
    if method_cfg.get("init", "scratch") == "nokd":
        return {"init": student_dir("nokd", wildcards.seed)}
    return {}


rule distill:
    input:
        unpack(distill_init),
        unpack(tuned_values),
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
        init=lambda wildcards, input: f"--init {input.init}" if "init" in input.keys() else "",
        tuned=lambda wildcards, input: f"--tuned {input.tuned}" if "tuned" in input.keys() else "",
    log:
        "logs/distill/{method}/{seed}.log",
    benchmark:
        "logs/benchmarks/distill/{method}/{seed}.tsv"
    threads: 1
    priority: PRIORITY["distill"]
    resources:
        **job_resources("distill"),
        gpu=1,
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd distill --config {params.cfg:q} --method {wildcards.method}"
        " --seed {wildcards.seed} --teacher {input.teacher}"
        " --train {input.train}/manifest.csv --valid {input.valid}/manifest.csv"
        " --out {output} --checkpoints {params.checkpoints} --threads {threads}"
        " {params.init} {params.tuned} 2> {log}"
