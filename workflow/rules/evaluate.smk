# Phase 7: score every system on the test split, then the comparison table (DVC metrics).


def system_model(wildcards):
    model = systems()[wildcards.system]
    return [model] if model else []


rule evaluate:
    input:
        test=f"{DATA}/mixtures/test",
        model=system_model,
    output:
        directory(f"{RESULTS}/eval/{{system}}"),
    params:
        cfg=sections("evaluate"),
        model=lambda wildcards, input: f"--model {input.model}" if input.model else "",
    log:
        "logs/evaluate/{system}.log",
    benchmark:
        "logs/benchmarks/evaluate/{system}.tsv"
    threads: job_cores(config["evaluate"]["threads"])
    resources:
        mem_mb=per_attempt(8000),
        runtime=per_attempt(60),
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd evaluate --config {params.cfg:q} --system {wildcards.system}"
        " {params.model} --manifest {input.test}/manifest.csv --out {output} --workers {threads}"
        " 2> {log}"


rule comparison_table:
    input:
        expand(f"{RESULTS}/eval/{{system}}", system=systems()),
    output:
        json=f"{RESULTS}/metrics.json",
        md=f"{RESULTS}/table.md",
        csv=f"{RESULTS}/table.csv",
    log:
        "logs/comparison_table.log",
    conda:
        "../../envs/sekd.yaml"
    shell:
        "sekd table --out {RESULTS} {input} 2> {log}"
