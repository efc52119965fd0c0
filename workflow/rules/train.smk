# The resume state (runs.LAST) and the MLflow run id (runs.RUN_ID_FILE) stay undeclared: Snakemake deletes
# declared outputs before a job and after a failure, and the resume state must survive both.
# A run that distils from another run of the study (train.distill_teacher: its name) has that run's checkpoint of
# the same seed as an input: the teacher trains first, and a retrained teacher re-runs its students.
rule train:
    input:
        MANIFEST,
        MLFLOW_READY,
        teacher=teacher_checkpoint,
    output:
        run_file(CHECKPOINT),
        run_file(TRAIN_LOG),
    log:
        "logs/{exp}/{model}/seed{seed}/train.log",
    benchmark:
        "logs/{exp}/{model}/seed{seed}/train.bench.tsv"
    params:
        config=CONFIG_FILE,
        run=run_folder,
        recipe=run_section("data", "model", "train"),
    resources:
        mem_mb=2900,
        gpu=1,
        runtime=train_runtime,
    conda:
        ENV
    shell:
        # More than one GPU for this job (e.g. the SLURM profile's set-resources): one process per GPU, DDP.
        "segmodels train --config {params.config:q} --model {wildcards.model:q} --seed {wildcards.seed}"
        " --out {params.run:q} --gpus {resources.gpu} > {log:q} 2>&1"
