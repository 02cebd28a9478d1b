# Models and data: fetch or convert each model once, and decide which corpus every job uses.


rule prepare_model:
    output:
        f"{RESULTS}/models/{{model}}.json",
    params:
        ref=lambda wildcards: MODELS[wildcards.model]["ref"],
    resources:
        **rule_resources("prepare_model"),
    log:
        f"{RESULTS}/logs/prepare_model/{{model}}.log",
    script:
        "../scripts/prepare_model.py"


rule prepare_data:
    output:
        info=f"{RESULTS}/data/corpus.json",
        name=f"{RESULTS}/data/corpus.name",
    params:
        data_dir=DATA_DIR,
        allow_fallback=config["allow_fallback_corpus"],
        splits=sorted({settings(model, group)["split"] for model in MODELS if reads_shared_corpus(model) for group in SETTING_GROUPS}),
    resources:
        **rule_resources("prepare_data"),
    log:
        f"{RESULTS}/logs/prepare_data.log",
    script:
        "../scripts/prepare_data.py"


# A model whose config entry names its own corpus reads the name from this file instead of
# corpus.name. The sasq job that loads the text reports a missing file.
rule model_corpus:
    output:
        f"{RESULTS}/data/corpus-{{model}}.name",
    params:
        corpus=lambda wildcards: MODELS[wildcards.model]["corpus"],
    log:
        f"{RESULTS}/logs/model_corpus/{{model}}.log",
    shell:
        "echo {params.corpus:q} > {output} 2> {log}"
