# sekd workflow: params.yaml drives every rule; `--configfile config/paper.yaml` overlays paper scale.
# Rules are thin: each calls one `sekd` command with only the config sections it reads.
# params.yaml is read by sekd's plain-YAML loader in common.smk, not by a `configfile:` directive:
# Snakemake's loader runs the ?expressions of a file marked `__use_yte__: true` as Python.


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/student.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/adapt.smk"
include: "workflow/rules/report.smk"


localrules: all, phase_corpus, phase_synth, phase_train, phase_tune, phase_distill, phase_evaluate, phase_adapt, phase_report, personal_table


rule all:
    default_target: True
    input:
        [phase_outputs(phase) for phase in PHASES],


# One target per DVC stage (dvc.yaml runs `snakemake ... phase_<stage>`; tests/test_dag_agreement.py
# checks that both agree). phase_tune and phase_distill hold every method; DVC runs them per method.
rule phase_corpus:
    input:
        phase_outputs("corpus"),


rule phase_synth:
    input:
        phase_outputs("synth"),


rule phase_train:
    input:
        phase_outputs("train"),


rule phase_tune:
    input:
        phase_outputs("tune"),


rule phase_distill:
    input:
        phase_outputs("distill"),


# DVC's foreach stages `<phase>@<method>` (one per method in tune.methods / distill.methods) run
# these: one target per method, generated from the params lists.
for _phase, _methods in PER_METHOD_PHASES.items():
    for _method in _methods:

        rule:
            name: f"phase_{_phase}_{_method}"
            localrule: True
            input:
                phase_outputs(_phase, _method),


rule phase_evaluate:
    input:
        phase_outputs("evaluate"),


rule phase_adapt:
    input:
        phase_outputs("adapt"),


rule phase_report:
    input:
        phase_outputs("report"),
