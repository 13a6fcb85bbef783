# After phase 8 (DVC stage report): the self-contained HTML report (results/report/index.html)
# of every phase.


rule report:
    input:
        table=f"{RESULTS}/table.csv",
        systems=[f"{RESULTS}/eval/{name}" for name in systems()],
        personal=[f"{RESULTS}/personal/{name}" for name in PERSONAL_TABLE],
        mixtures=[f"{DATA}/mixtures/{split}" for split in SPLITS],
    output:
        f"{RESULTS}/report/index.html",
    params:
        cfg=sections("paths"),
    log:
        "logs/report.log",
    benchmark:
        "logs/benchmarks/report.tsv"
    threads: 1
    resources:
        **job_resources("report"),
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd report --config {params.cfg:q} --out {RESULTS}/report 2> {log}"
