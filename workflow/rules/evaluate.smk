# Phase 7: score every system on the test split, then the comparison table (DVC metrics).
# One job scores all seeds of a method in one process (its imports, the test audio and the scoring
# workers serve every seed), so new students of one method rescore that method alone; the noisy
# input and the teacher share a job (a new teacher retrains every KD student anyway). Each system
# still has its folder eval/<system>.


def evaluated_systems(wildcards, output):
    """`sekd evaluate` options for the job's systems: each output folder is named after one."""
    names = [os.path.basename(out) for out in output]
    return evaluate_args([(name, systems()[name], out) for name, out in zip(names, output)])


rule evaluate:
    input:
        test=f"{DATA}/mixtures/test",
        models=lambda wildcards: [student_dir(wildcards.method, seed) for seed in DISTILL_SEEDS],
    output:
        [directory(f"{RESULTS}/eval/{{method}}-{seed}") for seed in DISTILL_SEEDS],
    wildcard_constraints:
        method="|".join(DISTILL_METHODS),
    params:
        cfg=sections("evaluate"),
        systems=evaluated_systems,
    log:
        "logs/evaluate/{method}.log",
    benchmark:
        "logs/benchmarks/evaluate/{method}.tsv"
    threads: job_cores(config["evaluate"]["threads"])
    resources:
        **job_resources("evaluate", per=len(DISTILL_SEEDS), cores=config["evaluate"]["threads"]),
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd evaluate --config {params.cfg:q} {params.systems}"
        " --manifest {input.test}/manifest.csv --workers {threads} 2> {log}"


use rule evaluate as evaluate_nokd with:
    input:
        test=f"{DATA}/mixtures/test",
        models=[student_dir("nokd", seed) for seed in STUDENT_SEEDS],
    output:
        [directory(f"{RESULTS}/eval/nokd-{seed}") for seed in STUDENT_SEEDS],
    log:
        "logs/evaluate/nokd.log",
    benchmark:
        "logs/benchmarks/evaluate/nokd.tsv"
    resources:
        **job_resources("evaluate", per=len(STUDENT_SEEDS), cores=config["evaluate"]["threads"]),


use rule evaluate as evaluate_reference with:
    input:
        test=f"{DATA}/mixtures/test",
        models=[TEACHER],
    output:
        [directory(f"{RESULTS}/eval/{system}") for system in ("noisy", "teacher")],
    log:
        "logs/evaluate/reference.log",
    benchmark:
        "logs/benchmarks/evaluate/reference.tsv"
    resources:
        **job_resources("evaluate", per=2, cores=config["evaluate"]["threads"]),


rule comparison_table:
    input:
        expand(f"{RESULTS}/eval/{{system}}", system=systems()),
    output:
        json=f"{RESULTS}/metrics.json",
        methods=f"{RESULTS}/methods.json",
        md=f"{RESULTS}/table.md",
        csv=f"{RESULTS}/table.csv",
    log:
        "logs/comparison_table.log",
    conda:
        "../../envs/sekd.yaml"
    shell:
        "sekd table --out {RESULTS} {input} 2> {log}"
