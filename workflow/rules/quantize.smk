# Calibrate, train and evaluate every (model, method, bits) through the `sasq` command line,
# plus the per-quantizer clipping diagnosis of sasq-init and sasq.
#
# Every job reads the corpus name chosen by prepare_data, so a run on the pydoc fallback uses
# it everywhere. The shell only assembles options; all numerics are in the sasq package.

TRAIN_CORPUS_OPTIONS = "--calib-corpus $corpus --train-corpus $corpus"
EVAL_CORPUS_OPTIONS = "--calib-corpus $corpus --eval-corpus $corpus"


rule calibrate:
    input:
        model=f"{RESULTS}/models/{{model}}.json",
        corpus=corpus_file,
    output:
        scales=f"{RUNS}/{{model}}/calibrate/{{method}}-{{bits}}.safetensors",
        json=f"{RUNS}/{{model}}/calibrate/{{method}}-{{bits}}.json",
    params:
        scheme=scheme_args,
    threads: config["threads"]
    resources:
        **rule_resources("calibrate"),
    log:
        f"{RESULTS}/logs/calibrate/{{model}}/{{method}}-{{bits}}.log",
    shell:
        "corpus=$(cat {input.corpus}); "
        "sasq calibrate {params.scheme} --calib-corpus $corpus --threads {threads} "
        "--output {output.scales} > {log} 2>&1"


# `sasq train` starts from the calibrated scales and writes <output>.ckpt every
# checkpoint_every steps. Snakemake does not know that file, so it survives an interrupted
# job and the rerun resumes from it.
rule train:
    input:
        model=f"{RESULTS}/models/{{model}}.json",
        corpus=corpus_file,
        init=f"{RUNS}/{{model}}/calibrate/{{method}}-{{bits}}.safetensors",
    output:
        scales=f"{RUNS}/{{model}}/train/{{method}}-{{bits}}.safetensors",
        json=f"{RUNS}/{{model}}/train/{{method}}-{{bits}}.json",
    params:
        scheme=scheme_args,
        train=train_args,
    threads: config["threads"]
    resources:
        **rule_resources("train"),
    log:
        f"{RESULTS}/logs/train/{{model}}/{{method}}-{{bits}}.log",
    shell:
        "corpus=$(cat {input.corpus}); "
        "sasq train {params.scheme} {params.train} " + TRAIN_CORPUS_OPTIONS + " --threads {threads} "
        "--init-scales {input.init} --output {output.scales} > {log} 2>&1"


rule evaluate:
    input:
        model=f"{RESULTS}/models/{{model}}.json",
        corpus=corpus_file,
        scales=scales_for,
    output:
        f"{RUNS}/{{model}}/evaluate/{{method}}-{{bits}}.json",
    params:
        scheme=scheme_args,
        evaluation=eval_args,
        scales=lambda wildcards, input: f"--scales {input.scales}" if input.scales else "",
    threads: config["threads"]
    resources:
        **rule_resources("evaluate"),
    log:
        f"{RESULTS}/logs/evaluate/{{model}}/{{method}}-{{bits}}.log",
    shell:
        "corpus=$(cat {input.corpus}); "
        "sasq evaluate {params.scheme} {params.evaluation} {params.scales} " + EVAL_CORPUS_OPTIONS + " --threads {threads} "
        "--output {output} > {log} 2>&1"


rule diagnose:
    input:
        model=f"{RESULTS}/models/{{model}}.json",
        corpus=corpus_file,
        scales=scales_for,
    output:
        f"{RUNS}/{{model}}/diagnose/{{method}}-{{bits}}.json",
    params:
        scheme=scheme_args,
        evaluation=lambda wildcards: eval_args(wildcards, "diagnose_windows"),
    threads: config["threads"]
    resources:
        **rule_resources("diagnose"),
    log:
        f"{RESULTS}/logs/diagnose/{{model}}/{{method}}-{{bits}}.log",
    shell:
        "corpus=$(cat {input.corpus}); "
        "sasq diagnose {params.scheme} {params.evaluation} " + EVAL_CORPUS_OPTIONS + " --threads {threads} "
        "--scales {input.scales} --output {output} > {log} 2>&1"
