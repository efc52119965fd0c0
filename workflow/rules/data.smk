if STUDY.data.source == "synthetic":

    rule synth:
        output:
            RAW_DONE,
        log:
            f"logs/{EXP}/synth.log",
        benchmark:
            f"logs/{EXP}/synth.bench.tsv"
        params:
            config=CONFIG_FILE,
            spec=section("data"),
        resources:
            mem_mb=500,
        threads: ALL_CORES
        conda:
            ENV
        shell:
            "segmodels synth --config {params.config:q} --workers {threads} > {log:q} 2>&1"


rule prepare:
    input:
        RAW_DONE if STUDY.data.source == "synthetic" else [],
    output:
        MANIFEST,
    log:
        f"logs/{EXP}/prepare.log",
    benchmark:
        f"logs/{EXP}/prepare.bench.tsv"
    params:
        config=CONFIG_FILE,
        spec=section("data"),
    resources:
        mem_mb=500,
    threads: ALL_CORES
    conda:
        ENV
    shell:
        "segmodels prepare --config {params.config:q} --workers {threads} > {log:q} 2>&1"


rule mlflow_init:
    output:
        MLFLOW_READY,
    log:
        f"logs/{EXP}/mlflow_init.log",
    benchmark:
        f"logs/{EXP}/mlflow_init.bench.tsv"
    params:
        config=CONFIG_FILE,
    resources:
        mem_mb=500,
    conda:
        ENV
    shell:
        "segmodels mlflow-init --config {params.config:q} --out {output:q} > {log:q} 2>&1"
