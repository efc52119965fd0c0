# last.pt and mlflow_run_id stay undeclared: Snakemake deletes declared outputs before a
# job and after a failure, and the resume state must survive both.
rule train:
    input:
        MANIFEST,
        MLFLOW_READY,
    output:
        RUN + "/checkpoint.pt",
        RUN + "/train_log.csv",
    log:
        LOG + "/train.log",
    benchmark:
        LOG + "/train.bench.tsv"
    params:
        recipe=section("data", "model", "train"),
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "segmodels train --config {CONFIG_FILE} --model {wildcards.model} --seed {wildcards.seed}"
        " --out " + RUN + " > {log} 2>&1"
