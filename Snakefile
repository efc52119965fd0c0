# segbench: data → train → evaluate → benchmark → summary, for every model of a study config.
#   snakemake --cores all --resources gpu=1                            # config/config.yaml (real Cityscapes)
#   snakemake --cores all --resources gpu=1 --configfile config/demo.yaml
#   snakemake --report reports/workflow.html [--configfile ...]         # after a run: figures, tables, runtimes
from snakemake.utils import min_version, validate

min_version("9.0")

# A --configfile replaces the default study instead of being merged into it, so the
# config Snakemake schedules is exactly the file that every `segmodels` job reads.
if not workflow.overwrite_configfiles:
    configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/deploy.smk"
include: "workflow/rules/robustness.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        REPORT,
        PUBLISHED,
