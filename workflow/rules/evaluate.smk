rule evaluate:
    input:
        "results/{exp}/{model}/seed{seed}/checkpoint.pt",
    output:
        "results/{exp}/{model}/seed{seed}/metrics.json",
        "results/{exp}/{model}/seed{seed}/per_class.csv",
        "results/{exp}/{model}/seed{seed}/confusion.npy",
        "results/{exp}/{model}/seed{seed}/confusion_per_image.npy",
    log:
        "logs/{exp}/{model}/seed{seed}/evaluate.log",
    benchmark:
        "logs/{exp}/{model}/seed{seed}/evaluate.bench.tsv"
    params:
        config=CONFIG_FILE,
        run=run_folder,
        spec=run_section("data", "evaluate"),
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "segmodels evaluate --config {params.config:q} --run {params.run:q} > {log:q} 2>&1"
