# Collect the result JSONs into results/ppl.csv, then write results/report.md and figures/.


rule collect:
    input:
        runs=evaluation_jsons(),
        models=expand(f"{RESULTS}/models/{{model}}.json", model=MODELS),
        corpus=f"{RESULTS}/data/corpus.json",
    output:
        f"{RESULTS}/ppl.csv",
    params:
        method_order=METHODS,
    log:
        f"{RESULTS}/logs/collect.log",
    script:
        "../scripts/collect.py"


rule report:
    input:
        ppl=f"{RESULTS}/ppl.csv",
        corpus=f"{RESULTS}/data/corpus.json",
        train=training_jsons(),
        published=str(REPO_ROOT / "workflow" / "resources" / "published_ppl.yaml"),
        figures=[f"{FIGURES}/{name}.png" for name in FIGURE_NAMES],
        latency=[f"{RESULTS}/latency.csv"] if config["latency"] else [],
        claims=[f"{RESULTS}/claims.md"] if CLAIMS_ON else [],
    output:
        f"{RESULTS}/report.md",
    params:
        models={name: {"ref": entry["ref"], "eval": settings(name, "eval"), "calib": settings(name, "calib"), "train": settings(name, "train")} for name, entry in MODELS.items()},
        method_order=METHODS,
        bit_tags=BIT_TAGS,
        config={key: config[key] for key in ("seed", "device", "dtype", "granularity", "weight_quantizer")},
    log:
        f"{RESULTS}/logs/report.log",
    script:
        "../scripts/report.py"


rule figures:
    input:
        ppl=f"{RESULTS}/ppl.csv",
        train=training_jsons(),
        diagnose=diagnose_jsons(),
    output:
        [f"{FIGURES}/{name}.png" for name in FIGURE_NAMES],
    params:
        method_order=METHODS,
        bit_tags=BIT_TAGS,
    log:
        f"{RESULTS}/logs/figures.log",
    script:
        "../scripts/figures.py"


rule latency:
    output:
        csv=f"{RESULTS}/latency.csv",
        figure=f"{FIGURES}/latency.png",
    params:
        extra=config["latency_args"],
    # A benchmark shares the machine with nothing: it takes every core snakemake may use (capped by
    # --cores), so no other job runs beside it and its threads match the machine's.
    threads: config["latency_threads"] or os.cpu_count()
    resources:
        **rule_resources("latency"),
    log:
        f"{RESULTS}/logs/latency.log",
    shell:
        "python -m sasq.latency --device {config[device]} --threads {threads} {params.extra} "
        "--output {output.csv} --figure {output.figure} > {log} 2>&1"
