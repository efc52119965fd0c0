rule summarize:
    input:
        all_runs(METRICS),
        all_runs(LATENCY),
        all_runs(CONFUSION_PER_IMAGE),
        all_runs(STATISTICS_PER_IMAGE),
        all_deployed(CONFUSION_PER_IMAGE, path=True),
        all_deployed(STATISTICS_PER_IMAGE, path=True),
        all_deployed(DEPLOY_LATENCY),
        all_robust(),
    output:
        summary=report(SUMMARY, caption="../report/summary.rst", category="Results"),
        robustness=ROBUSTNESS_FILES,  # written beside it with robustness.enabled
    log:
        f"logs/{EXP}/summarize.log",
    benchmark:
        f"logs/{EXP}/summarize.bench.tsv"
    params:
        config=CONFIG_FILE,
        spec=section("stats", "deploy", "robustness"),
    resources:
        mem_mb=900,
    conda:
        ENV
    shell:
        "segmodels summarize --config {params.config:q} --out {output.summary:q} > {log:q} 2>&1"


# Paired bootstrap over validation images: intervals for the differences the report discusses.
rule compare:
    input:
        all_runs(CONFUSION_PER_IMAGE),
        all_runs(STATISTICS_PER_IMAGE),
    output:
        report(COMPARISONS, caption="../report/comparisons.rst", category="Results"),
    log:
        f"logs/{EXP}/compare.log",
    benchmark:
        f"logs/{EXP}/compare.bench.tsv"
    params:
        config=CONFIG_FILE,
        spec=section("stats"),
    resources:
        mem_mb=500,
    conda:
        ENV
    shell:
        "segmodels compare --config {params.config:q} --out {output:q} > {log:q} 2>&1"


rule figures:
    input:
        SUMMARY,
        COMPARISONS,
        ROBUSTNESS_FILES,
    output:
        # Only the figures whose inputs exist are drawn (figures.json names the rest): the folder is the output.
        report(
            directory(FIGURES),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    log:
        f"logs/{EXP}/figures.log",
    benchmark:
        f"logs/{EXP}/figures.bench.tsv"
    params:
        config=CONFIG_FILE,
    resources:
        mem_mb=500,
    conda:
        ENV
    shell:
        "segmodels figures --config {params.config:q} --out {output:q} > {log:q} 2>&1"


rule report:
    input:
        SUMMARY,
        COMPARISONS,
        ROBUSTNESS_FILES,
        figures=FIGURES,
        template=TEMPLATE,
    output:
        report(REPORT, caption="../report/report.rst", category="Report"),
    log:
        f"logs/{EXP}/report.log",
    benchmark:
        f"logs/{EXP}/report.bench.tsv"
    params:
        config=CONFIG_FILE,
    resources:
        mem_mb=1200,
    conda:
        ENV
    shell:
        "segmodels report --config {params.config:q} --figures {input.figures:q} --template {input.template:q} --out {output:q} > {log:q} 2>&1"


rule publish:
    input:
        SUMMARY,
        figures=FIGURES,
        report=REPORT,
    output:
        PUBLISHED,
    log:
        f"logs/{EXP}/publish.log",
    benchmark:
        f"logs/{EXP}/publish.bench.tsv"
    params:
        config=CONFIG_FILE,
    resources:
        mem_mb=1100,
    conda:
        ENV
    shell:
        "segmodels publish --config {params.config:q} --figures {input.figures:q} --report {input.report:q} --out {output:q} > {log:q} 2>&1"
