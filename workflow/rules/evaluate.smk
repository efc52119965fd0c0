rule evaluate:
    input:
        RUN + "/checkpoint.pt",
    output:
        RUN + "/metrics.json",
        RUN + "/per_class.csv",
        RUN + "/confusion.npy",
    log:
        LOG + "/evaluate.log",
    benchmark:
        LOG + "/evaluate.bench.tsv"
    params:
        spec=section("evaluate"),
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "segmodels evaluate --config {CONFIG_FILE} --run " + RUN + " > {log} 2>&1"
