# The deploy section (config: deploy): each deployed run on the CPU, path by path. Off by default; with it on, the
# summary waits for these files. CPU jobs: no gpu resource.


# One path's scores on the validation split: RUN/deploy/{path}/ as `segmodels evaluate` writes a run's.
rule deploy_score:
    input:
        run_file(CHECKPOINT),
        MANIFEST,
    output:
        deploy_pattern(METRICS, "{path}"),
        deploy_pattern(CONFUSION_PER_IMAGE, "{path}"),
        deploy_pattern(STATISTICS_PER_IMAGE, "{path}"),
    wildcard_constraints:
        path="|".join(re.escape(p) for p in DEPLOY_PATHS) or "-",
    log:
        "logs/{exp}/{model}/seed{seed}/deploy-{path}.log",
    benchmark:
        "logs/{exp}/{model}/seed{seed}/deploy-{path}.bench.tsv"
    params:
        config=CONFIG_FILE,
        run=run_of_deploy_file,
        spec=run_section("data", "evaluate", "deploy"),
    resources:
        mem_mb=1900,
    conda:
        ENV
    shell:
        "segmodels deploy --config {params.config:q} --run {params.run:q} --paths {wildcards.path:q} --no-latency "
        "> {log:q} 2>&1"


# Every path timed on the CPU; takes every core, so nothing else runs while it times.
rule deploy_latency:
    input:
        run_file(CHECKPOINT),
    output:
        deploy_pattern(DEPLOY_LATENCY),
    log:
        "logs/{exp}/{model}/seed{seed}/deploy-latency.log",
    benchmark:
        "logs/{exp}/{model}/seed{seed}/deploy-latency.bench.tsv"
    params:
        config=CONFIG_FILE,
        run=run_of_deploy_file,
        spec=run_section("benchmark", "deploy"),
    threads: ALL_CORES
    resources:
        mem_mb=2100,
    conda:
        ENV
    shell:
        "segmodels deploy --config {params.config:q} --run {params.run:q} --no-scores > {log:q} 2>&1"
