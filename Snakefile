# The rose pruning workflow. Each stage lives in its own file under workflow/rules/, and
# common.smk validates the config and builds every path; the rules call the rose command line.
# The default run; a --configfile given on the command line replaces it instead of merging into it.
if not config.get("models"):

    configfile: "config.yaml"



report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/blocks.smk"
include: "workflow/rules/checkpoint.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/zeroshot.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        rules.summary.output,
        rules.figures.input,
    default_target: True
