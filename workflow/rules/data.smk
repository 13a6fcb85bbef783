# Phases 1-2 (README): 1. corpus and noise (phase_corpus); 2. reverberant mixtures and the
# per-speaker personal sets (phase_synth).

# Every synthesis job takes all cores, so one left waiting behind a 1-core job (the teacher) would
# idle a core for the whole of that job: synthesis goes first (PRIORITY in common.smk).


rule corpus:
    output:
        directory(f"{DATA}/corpus"),
    params:
        cfg=sections("corpus"),
    log:
        "logs/corpus.log",
    benchmark:
        "logs/benchmarks/corpus.tsv"
    threads: job_cores()
    resources:
        **job_resources("corpus"),
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd corpus --config {params.cfg:q} --out {output} --workers {threads} 2> {log}"


rule noise:
    input:
        corpus=f"{DATA}/corpus",
    output:
        directory(f"{DATA}/noise"),
    params:
        cfg=sections("noise", "split"),
    log:
        "logs/noise.log",
    benchmark:
        "logs/benchmarks/noise.tsv"
    threads: job_cores()
    resources:
        **job_resources("noise"),
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd noise --config {params.cfg:q} --corpus {input.corpus} --out {output}"
        " --workers {threads} 2> {log}"


def synth_sections(personal):
    """The personal sets depend on synth.personal; the mixture splits do not (a change of the
    personal sessions must not rebuild the training data and everything trained on it)."""
    synth = {key: value for key, value in config["synth"].items() if personal or key != "personal"}
    return json.dumps({"synth": synth, "split": config["split"]}, sort_keys=True)


rule synth:
    input:
        corpus=f"{DATA}/corpus",
        noise=f"{DATA}/noise",
    output:
        directory(f"{DATA}/mixtures/{{split}}"),
    wildcard_constraints:
        split="train|valid|test",
    params:
        cfg=synth_sections(personal=False),
    log:
        "logs/synth/{split}.log",
    benchmark:
        "logs/benchmarks/synth/{split}.tsv"
    threads: job_cores()
    priority: PRIORITY["synth"]
    resources:
        **job_resources("synth"),
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd synth --config {params.cfg:q} --split {wildcards.split}"
        " --corpus {input.corpus} --noise {input.noise} --out {output} --workers {threads} 2> {log}"


checkpoint synth_personal:
    input:
        corpus=f"{DATA}/corpus",
        noise=f"{DATA}/noise",
    output:
        directory(f"{DATA}/personal"),
    params:
        cfg=synth_sections(personal=True),
    log:
        "logs/synth/personal.log",
    benchmark:
        "logs/benchmarks/synth/personal.tsv"
    threads: job_cores()
    priority: PRIORITY["synth"]
    resources:
        **job_resources("synth_personal"),
    conda:
        "../../envs/sekd.yaml"
    shell:
        "SEKD_RULE={rule} sekd synth --config {params.cfg:q} --split personal"
        " --corpus {input.corpus} --noise {input.noise} --out {output} --workers {threads} 2> {log}"
