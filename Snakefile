# SASQ reproducibility workflow: every (model, method, bit-width) of the config, evaluated by
# the `sasq` command line, collected into results/ppl.csv, results/report.md and figures/.
#
#   snakemake --cores all                                   # config/config.yaml
#   snakemake --cores all --configfile config/paper.yaml    # the paper's LLaMA matrix (GPUs)
#   snakemake --profile profiles/slurm --configfile config/paper.yaml
#
# config/README.md describes every key.

from snakemake.utils import min_version

min_version("9.0")


# config/config.yaml is the default. A --configfile replaces it instead of being merged into it,
# so a config's models and methods are exactly the ones it lists.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/claims.smk"


rule all:
    input:
        final_targets(),
    default_target: True
