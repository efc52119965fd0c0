rule benchmark:
    input:
        RUN + "/checkpoint.pt",
        RUN + "/metrics.json",
    output:
        RUN + "/latency.json",
    log:
        LOG + "/benchmark.log",
    benchmark:
        LOG + "/benchmark.bench.tsv"
    params:
        spec=section("benchmark"),
    resources:
        gpu=ALL_GPUS,
    threads: workflow.cores
    conda:
        ENV
    shell:
        "segmodels benchmark --config {CONFIG_FILE} --run " + RUN + " > {log} 2>&1"
