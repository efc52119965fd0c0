# Takes every GPU the run was given, so no other GPU job runs while it times.
rule benchmark:
    input:
        run_file(CHECKPOINT),
        run_file(METRICS),
    output:
        run_file(LATENCY),
    log:
        "logs/{exp}/{model}/seed{seed}/benchmark.log",
    benchmark:
        "logs/{exp}/{model}/seed{seed}/benchmark.bench.tsv"
    params:
        config=CONFIG_FILE,
        run=run_folder,
        spec=run_section("benchmark"),
    resources:
        mem_mb=2000,
        gpu=ALL_GPUS,
    threads: ALL_CORES
    conda:
        ENV
    shell:
        "segmodels benchmark --config {params.config:q} --run {params.run:q} > {log:q} 2>&1"
