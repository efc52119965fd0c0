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
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        # More than one GPU for this job (e.g. the SLURM profile's set-resources): one process per GPU, DDP.
        "segmodels train --config {params.config:q} --model {wildcards.model:q} --seed {wildcards.seed}"
        " --out {params.run:q} --gpus {resources.gpu} > {log:q} 2>&1"
