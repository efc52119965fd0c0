# last.pt and mlflow_run_id stay undeclared: Snakemake deletes declared outputs before a
# job and after a failure, and the resume state must survive both.
rule train:
    input:
        f"data/packed/{DATASET}/manifest.json",
        f"results/{EXP}/mlflow_experiment_id",
    output:
        "results/{exp}/{model}/seed{seed}/checkpoint.pt",
        "results/{exp}/{model}/seed{seed}/train_log.csv",
    log:
        "logs/{exp}/{model}/seed{seed}/train.log",
    benchmark:
        "logs/{exp}/{model}/seed{seed}/train.bench.tsv"
    params:
        config=CONFIG_FILE,
        run=run_folder,
        recipe=run_section("data", "model", "train"),
        # More than one GPU for this job (e.g. the SLURM profile's set-resources): one process per GPU, DDP.
        launch=lambda wildcards, resources: (
            f"torchrun --standalone --nproc_per_node {resources.gpu} -m" if resources.gpu > 1 else ""
        ),
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "{params.launch} segmodels train --config {params.config} --model {wildcards.model} --seed {wildcards.seed}"
        " --out {params.run} > {log} 2>&1"
