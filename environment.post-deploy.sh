#!/usr/bin/env bash
# Snakemake runs this inside the jobs' environment right after making it from environment.yml
# (`--software-deployment-method conda`): it installs the project, editable, from the checkout whose Snakefile
# runs, so that every job's `segmodels` is that checkout's code. SEGMODELS_SOURCE is that checkout's folder,
# set by workflow/rules/common.smk. The dependencies are environment.yml's own, hence --no-deps.
set -euo pipefail
: "${SEGMODELS_SOURCE:?not set: this runs through Snakemake (workflow/rules/common.smk sets it)}"
python -m pip install --no-deps --editable "$SEGMODELS_SOURCE"
