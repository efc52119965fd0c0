# The robustness section (config: robustness): the validation images corrupted once per study (CPU jobs, one per
# corruption, shared by every model), then each scored run under every corruption and severity. Off by default;
# with it on, the summary waits for these files.


# One corruption's images at every configured severity: data/corrupted/{dataset}/{corruption}/.
rule corrupt:
    input:
        MANIFEST,
    output:
        corrupted_marker(DATASET, "{corruption}"),
    wildcard_constraints:
        corruption="|".join(re.escape(c) for c in ROBUST_CORRUPTIONS) or "-",
    log:
        f"logs/corrupt/{DATASET}/{{corruption}}.log",
    benchmark:
        f"logs/corrupt/{DATASET}/{{corruption}}.bench.tsv"
    params:
        config=CONFIG_FILE,
        spec=json.dumps({k: config.get("robustness", {}).get(k) for k in ("severities", "images")}, sort_keys=True),
    threads: ALL_CORES
    resources:
        mem_mb=1000,
    conda:
        ENV
    shell:
        "segmodels corrupt --config {params.config:q} --corruption {wildcards.corruption:q} --workers {threads} "
        "--no-progress > {log:q} 2>&1"


# One run under every corruption and severity: RUN/robustness/, robustness.json last.
rule robustness:
    input:
        run_file(CHECKPOINT),
        run_file(METRICS),
        run_file(CONFUSION_PER_IMAGE),
        expand(corrupted_marker(DATASET, "{corruption}"), corruption=ROBUST_CORRUPTIONS if STUDY.robustness.cache else []),
    output:
        robustness_pattern(),
    log:
        "logs/{exp}/{model}/seed{seed}/robustness.log",
    benchmark:
        "logs/{exp}/{model}/seed{seed}/robustness.bench.tsv"
    params:
        config=CONFIG_FILE,
        run=run_of_robustness_file,
        root=CORRUPTED_ROOT if STUDY.robustness.cache else "data/corrupted-none",  # none: made in the job
        spec=lambda wildcards: run_section("data", "evaluate")(wildcards) + section("robustness"),
    resources:
        mem_mb=2000,
        gpu=1,
    conda:
        ENV
    shell:
        "segmodels robustness --config {params.config:q} --run {params.run:q} --root {params.root:q} > {log:q} 2>&1"
