rule evaluate:
    input:
        run_file(CHECKPOINT),
    output:
        run_file(METRICS),
        run_file(PER_CLASS),
        run_file(CONFUSION),
        run_file(CONFUSION_PER_IMAGE),
        run_file(STATISTICS_PER_IMAGE),
    log:
        "logs/{exp}/{model}/seed{seed}/evaluate.log",
    benchmark:
        "logs/{exp}/{model}/seed{seed}/evaluate.bench.tsv"
    params:
        config=CONFIG_FILE,
        run=run_folder,
        spec=run_section("data", "evaluate"),
    resources:
        mem_mb=1800,
        gpu=1,
    conda:
        ENV
    shell:
        "segmodels evaluate --config {params.config:q} --run {params.run:q} > {log:q} 2>&1"
