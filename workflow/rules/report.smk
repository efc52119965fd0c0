rule summarize:
    input:
        all_runs(RUN + "/metrics.json"),
        all_runs(RUN + "/latency.json"),
    output:
        SUMMARY,
    log:
        f"logs/{EXP}/summarize.log",
    benchmark:
        f"logs/{EXP}/summarize.bench.tsv"
    conda:
        ENV
    shell:
        "segmodels summarize --config {CONFIG_FILE} --out {output} > {log} 2>&1"
