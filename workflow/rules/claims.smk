# The claims section: the fp-gain control, a second corpus, seeds, ablations, a generation check
# and zero-shot accuracy, all at the claims bit-width (claims.wbits/abits). Claims runs calibrate
# inside `sasq train` (no --init-scales), so a variant's seed, observer or corpus reaches its
# calibration too. `$base` is the model's corpus (corpus_file in common.smk), and cross_corpus
# there gives its second corpus.


rule claims_train:
    input:
        model=f"{RESULTS}/models/{{model}}.json",
        corpus=corpus_file,
        shared=shared_corpus_input,
    output:
        scales=f"{RUNS}/{{model}}/claims/train/{{method}}-{{bits}}-{{variant}}.safetensors",
        json=f"{RUNS}/{{model}}/claims/train/{{method}}-{{bits}}-{{variant}}.json",
    params:
        scheme=claim_scheme_args,
        train=claim_train_args,
        corpus=claim_train_corpus,
    threads: config["threads"]
    resources:
        **rule_resources("claims_train"),
    log:
        f"{RESULTS}/logs/claims/train/{{model}}/{{method}}-{{bits}}-{{variant}}.log",
    shell:
        "base=$(cat {input.corpus}); corpus={params.corpus}; "
        "sasq train {params.scheme} {params.train} --calib-corpus $corpus --train-corpus $corpus --threads {threads} "
        "--output {output.scales} > {log} 2>&1"


rule claims_calibrate:
    input:
        model=f"{RESULTS}/models/{{model}}.json",
        corpus=corpus_file,
        shared=shared_corpus_input,
    output:
        scales=f"{RUNS}/{{model}}/claims/calibrate/{{method}}-{{bits}}-{{variant}}.safetensors",
        json=f"{RUNS}/{{model}}/claims/calibrate/{{method}}-{{bits}}-{{variant}}.json",
    params:
        scheme=claim_scheme_args,
        corpus=claim_train_corpus,
    threads: config["threads"]
    resources:
        **rule_resources("claims_train"),
    log:
        f"{RESULTS}/logs/claims/calibrate/{{model}}/{{method}}-{{bits}}-{{variant}}.log",
    shell:
        "base=$(cat {input.corpus}); corpus={params.corpus}; "
        "sasq calibrate {params.scheme} --calib-corpus $corpus --threads {threads} --output {output.scales} > {log} 2>&1"


rule claims_evaluate:
    input:
        model=f"{RESULTS}/models/{{model}}.json",
        corpus=corpus_file,
        shared=shared_corpus_input,
        scales=claim_scales,
    output:
        f"{RUNS}/{{model}}/claims/evaluate/{{method}}-{{bits}}-{{variant}}-{{scored}}.json",
    params:
        scheme=claim_scheme_args,
        evaluation=eval_args,
        corpus=claim_train_corpus,
        scored=claim_scored_corpus,
    threads: config["threads"]
    resources:
        **rule_resources("claims_evaluate"),
    log:
        f"{RESULTS}/logs/claims/evaluate/{{model}}/{{method}}-{{bits}}-{{variant}}-{{scored}}.log",
    shell:
        "base=$(cat {input.corpus}); corpus={params.corpus}; "
        "sasq evaluate {params.scheme} {params.evaluation} --scales {input.scales} --calib-corpus $corpus "
        "--eval-corpus {params.scored} --threads {threads} --output {output} > {log} 2>&1"


# Every method of the main matrix, with its main-matrix scales, scored on the second corpus.
rule cross_evaluate:
    input:
        model=f"{RESULTS}/models/{{model}}.json",
        corpus=corpus_file,
        shared=shared_corpus_input,
        scales=scales_for,
    output:
        f"{RUNS}/{{model}}/cross/{{method}}-{{bits}}.json",
    params:
        scheme=scheme_args,
        evaluation=eval_args,
        scales=lambda wildcards, input: f"--scales {input.scales}" if input.scales else "",
        cross=lambda wildcards: cross_corpus(wildcards.model),
    threads: config["threads"]
    resources:
        **rule_resources("claims_evaluate"),
    log:
        f"{RESULTS}/logs/cross/{{model}}/{{method}}-{{bits}}.log",
    shell:
        "corpus=$(cat {input.corpus}); "
        "sasq evaluate {params.scheme} {params.evaluation} {params.scales} --calib-corpus $corpus "
        "--eval-corpus {params.cross} --threads {threads} --output {output} > {log} 2>&1"


rule generate:
    input:
        model=f"{RESULTS}/models/{{model}}.json",
        corpus=corpus_file,
        scales=scales_for,
    output:
        f"{RUNS}/{{model}}/generate/{{method}}-{{bits}}.json",
    params:
        scheme=scheme_args,
        scales=lambda wildcards, input: f"--scales {input.scales}" if input.scales else "",
    threads: config["threads"]
    resources:
        **rule_resources("generate"),
    log:
        f"{RESULTS}/logs/generate/{{model}}/{{method}}-{{bits}}.log",
    shell:
        "corpus=$(cat {input.corpus}); "
        "sasq generate {params.scheme} {params.scales} --calib-corpus $corpus --threads {threads} "
        f"--max-new-tokens {CLAIMS['generation_tokens']} --output {{output}} > {{log}} 2>&1"


rule zeroshot:
    input:
        model=f"{RESULTS}/models/{{model}}.json",
        corpus=corpus_file,
        scales=scales_for,
    output:
        f"{RUNS}/{{model}}/zeroshot/{{method}}-{{bits}}.json",
    params:
        scheme=scheme_args,
        scales=lambda wildcards, input: f"--scales {input.scales}" if input.scales else "",
        limit=f"--limit {CLAIMS['zeroshot_limit']}" if CLAIMS["zeroshot_limit"] else "",
    threads: config["threads"]
    resources:
        **rule_resources("zeroshot"),
    log:
        f"{RESULTS}/logs/zeroshot/{{model}}/{{method}}-{{bits}}.log",
    shell:
        "corpus=$(cat {input.corpus}); "
        "sasq zeroshot {params.scheme} {params.scales} {params.limit} --calib-corpus $corpus --threads {threads} "
        f"--tasks {','.join(CLAIMS['zeroshot_tasks'])} --output {{output}} > {{log}} 2>&1"


rule claims:
    input:
        runs=claims_jsons(),
        ppl=f"{RESULTS}/ppl.csv",
        latency=[f"{RESULTS}/latency.csv"] if config["latency"] else [],
    output:
        f"{RESULTS}/claims.md",
    params:
        cross_trained=CROSS_TRAINED,
        claim_tag=CLAIM_TAG,
        seeds=CLAIMS["seeds"],
        variants=CLAIM_VARIANTS,
        models=list(MODELS),
        runs_dir=RUNS,
        zeroshot_note="" if ZEROSHOT_AVAILABLE or not CLAIMS["zeroshot_tasks"] else
        "skipped: lm-eval is not installed in the workflow's environment; `pip install -e '.[zeroshot]'` adds it",
    log:
        f"{RESULTS}/logs/claims.log",
    script:
        "../scripts/claims.py"
