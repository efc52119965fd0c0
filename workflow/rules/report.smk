rule summarize:
    input:
        all_runs(METRICS),
        all_runs(LATENCY),
        all_runs(CONFUSION_PER_IMAGE),
    output:
        SUMMARY,
    log:
        f"logs/{EXP}/summarize.log",
    benchmark:
        f"logs/{EXP}/summarize.bench.tsv"
    params:
        config=CONFIG_FILE,
        spec=section("stats"),
    conda:
        ENV
    shell:
        "segmodels summarize --config {params.config:q} --out {output:q} > {log:q} 2>&1"


# Paired bootstrap over validation images: intervals for the differences the report discusses.
rule compare:
    input:
        all_runs(CONFUSION_PER_IMAGE),
    output:
        COMPARISONS,
    log:
        f"logs/{EXP}/compare.log",
    benchmark:
        f"logs/{EXP}/compare.bench.tsv"
    params:
        config=CONFIG_FILE,
        spec=section("stats"),
    conda:
        ENV
    shell:
        "segmodels compare --config {params.config:q} --out {output:q} > {log:q} 2>&1"


rule figures:
    input:
        SUMMARY,
        COMPARISONS,
    output:
        FIGURES,
    log:
        f"logs/{EXP}/figures.log",
    benchmark:
        f"logs/{EXP}/figures.bench.tsv"
    params:
        config=CONFIG_FILE,
    conda:
        ENV
    shell:
        "segmodels figures --config {params.config:q} --out reports/figures > {log:q} 2>&1"


rule report:
    input:
        SUMMARY,
        COMPARISONS,
        FIGURES,
        template=TEMPLATE,
    output:
        REPORT,
    log:
        f"logs/{EXP}/report.log",
    benchmark:
        f"logs/{EXP}/report.bench.tsv"
    params:
        config=CONFIG_FILE,
    conda:
        ENV
    shell:
        "segmodels report --config {params.config:q} --figures reports/figures --template {input.template:q} --out {output:q} > {log:q} 2>&1"


rule publish:
    input:
        SUMMARY,
        FIGURES,
        report=REPORT,
    output:
        PUBLISHED,
    log:
        f"logs/{EXP}/publish.log",
    benchmark:
        f"logs/{EXP}/publish.bench.tsv"
    params:
        config=CONFIG_FILE,
    conda:
        ENV
    shell:
        "segmodels publish --config {params.config:q} --report {input.report:q} --out {output:q} > {log:q} 2>&1"
