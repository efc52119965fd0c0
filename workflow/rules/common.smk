# Names and paths shared by the rules. No job logic here: every job is a `segmodels` call.
import json
import os
import re

from segmodels.study import runs
from segmodels.study.config import study_from_dict
from segmodels.study.matrix import expand_runs, run_sections
from segmodels.study.runs import (
    CHECKPOINT,
    CONFUSION,
    CONFUSION_PER_IMAGE,
    LATENCY,
    METRICS,
    PER_CLASS,
    STATISTICS_PER_IMAGE,
    TRAIN_LOG,
)
from segmodels.report import TEMPLATE as REPORT_TEMPLATE
from segmodels.study.deploy import LATENCY as DEPLOY_LATENCY, deploy_pattern, deployed_runs, scored_paths
from segmodels.study.plan import planned_minutes, read_plan
from segmodels.data.corruptions import require_corruptions
from segmodels.study.robustness import (
    COMPARISONS as ROBUSTNESS_COMPARISONS_FILE,
    CORRUPTED_ROOT,
    TABLE as ROBUSTNESS_TABLE_FILE,
    corrupted_marker,
    robust_runs,
    robustness_pattern,
    study_corruptions,
)

if len(workflow.overwrite_configfiles) > 1:
    raise ValueError("give one study with --configfile; its file is what every job reads")
CONFIG_FILE = workflow.overwrite_configfiles[0] if workflow.overwrite_configfiles else "config/config.yaml"

STUDY = study_from_dict(config, where=CONFIG_FILE)  # validated (plugins imported first), defaults filled in
EXP = STUDY.experiment
DATASET = STUDY.data.dataset
RUNS = {run.name: run for run in expand_runs(STUDY, where=CONFIG_FILE)}
MODELS = list(RUNS)  # run names: {backbone}-{head}[_tag...], the matrix of models × axes expanded
SEEDS = STUDY.seeds

ENV = "../../environment.yml"  # a software environment for --software-deployment-method conda
# The project itself is installed into that environment by environment.post-deploy.sh, from this checkout: Snakemake
# creates the environment from a copy of the file under .snakemake/conda/, where a relative path finds nothing.
os.environ.update(SEGMODELS_SOURCE=workflow.basedir)

RAW_DONE = f"data/raw/{DATASET}/synth.json"
MANIFEST = f"data/packed/{DATASET}/manifest.json"
MLFLOW_READY = f"results/{EXP}/mlflow_experiment_id"
SUMMARY = f"results/{EXP}/summary.csv"
COMPARISONS = f"results/{EXP}/comparisons.csv"
FIGURES = "reports/figures"  # the PNG and PDF of every figure drawn, and figures.json listing them
REPORT = "reports/report.pdf"
PUBLISHED = f"results/{EXP}/summary/published.json"
TEMPLATE = str(REPORT_TEMPLATE)  # the template installed with segmodels


wildcard_constraints:
    exp=re.escape(EXP),
    model="|".join(re.escape(m) for m in MODELS),
    seed=r"\d+",


PLAN = read_plan(f"results/{EXP}/plan.csv")  # `segmodels plan`'s estimate, when one was made


def train_runtime(wildcards):
    """Minutes a scheduler grants one training (SLURM's runtime): the plan's time × 1.5, else a day."""
    return planned_minutes(PLAN, wildcards.model, 1440)


def run_file(name):
    """The path pattern of a run folder's file (its name from segmodels.study.runs), with {exp}, {model}, {seed}."""
    return runs.pattern(name)


def all_runs(name):
    """That file of every run of the study."""
    return expand(run_file(name), exp=EXP, model=MODELS, seed=SEEDS)


def teacher_checkpoint(wildcards):
    """The checkpoint of the same seed of the run the job's run distils from, so the teacher trains first; none
    for a run without a teacher or with a teacher's checkpoint outside the study."""
    teacher = RUNS[wildcards.model].teacher
    return expand(run_file(CHECKPOINT), exp=wildcards.exp, model=teacher, seed=wildcards.seed) if teacher else []


def section(*names):
    """The config sections a job depends on, as one string: a change re-runs that job (params trigger)."""
    return json.dumps({name: config.get(name) for name in names}, sort_keys=True)


def run_section(*names):
    """As section(), with the run's own overrides and axis values set: a change to one model's entry re-runs
    that model's jobs only."""
    return lambda wildcards: json.dumps(run_sections(config, RUNS[wildcards.model], *names), sort_keys=True)


# A benchmark job takes every GPU the run was given, so no other GPU job runs beside it.
ALL_GPUS = workflow.global_resources["gpu"].value if "gpu" in workflow.global_resources else 1
# The data jobs and the benchmark take every core the run was given (--cores). Not workflow.cores: that stops
# Snakemake where no --cores is given, as in `snakemake --report`, which runs no job.
ALL_CORES = workflow.global_resources["_cores"].value or 1
# Each rule's `resources: mem_mb=` is the peak resident memory of its jobs in the demo (logs/**/*.bench.tsv) × 1.5,
# at least 500; README's table of rules lists them and says which grow with the data.


def run_folder(wildcards, output):
    """A job's run folder: the folder of its first output."""
    return os.path.dirname(output[0])


# The deploy section (workflow/rules/deploy.smk): the deployed runs and their CPU paths.
DEPLOYED = deployed_runs(STUDY, MODELS, where=CONFIG_FILE)
DEPLOY_PATHS = scored_paths(STUDY.deploy.paths)


def all_deployed(name, path=None):
    """That deployment file of every deployed run, seed and (for a path's file) scored path."""
    if not DEPLOYED:
        return []
    return expand(deploy_pattern(name, "{path}" if path else None), exp=EXP, model=DEPLOYED, seed=SEEDS,
                  path=DEPLOY_PATHS)


def run_of_deploy_file(wildcards, output):
    """The run folder of a job whose first output is RUN/deploy/[PATH/]FILE."""
    folder = os.path.dirname(output[0])
    return os.path.dirname(os.path.dirname(folder) if wildcards.get("path") else folder)


# The robustness section (workflow/rules/robustness.smk): the scored runs and the corruptions.
ROBUST = robust_runs(STUDY, MODELS, where=CONFIG_FILE)
ROBUST_CORRUPTIONS = study_corruptions(STUDY, where=CONFIG_FILE) if ROBUST else []
require_corruptions(ROBUST_CORRUPTIONS)  # a missing package is named now, with its install line, before any job
# Written by the summary beside summary.csv when the section is on.
ROBUSTNESS_FILES = [f"results/{EXP}/{ROBUSTNESS_TABLE_FILE}", f"results/{EXP}/{ROBUSTNESS_COMPARISONS_FILE}"] if ROBUST else []


def all_robust():
    """robustness.json of every scored run and seed."""
    return expand(robustness_pattern(), exp=EXP, model=ROBUST, seed=SEEDS) if ROBUST else []


def run_of_robustness_file(wildcards, output):
    """The run folder of a job whose first output is RUN/robustness/FILE."""
    return os.path.dirname(os.path.dirname(output[0]))
