# Config validation and the helpers that turn the config into the job matrix.

import copy
import importlib.util
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO_ROOT = Path(workflow.basedir).resolve()
STORIES260K_FOLDER = "stories260K-hf"

CORPUS_NAMES = ("wikitext2", "tinystories", "pydoc")
TEXT_CORPUS = re.compile(r"text:\S+")


def _config_error(key, message):
    return WorkflowError(f"invalid config value for '{key}': {message}")


def _check_corpus(key, value, names):
    """Raise a one-line config error unless value is one of names or text:PATH.

    The schema check would also reject it, but with a multi-line dump.
    """
    if value is None:
        return
    if isinstance(value, str) and (value in names or TEXT_CORPUS.fullmatch(value)):
        return
    raise _config_error(key, f"{value!r} is not a corpus; use {', '.join(names)} or text:PATH (no spaces)")


# A model's eval, calib and train blocks override the global ones key by key. Keep them as the user
# wrote them, because validation fills schema defaults into them too and those would hide global values.
SETTING_GROUPS = ("eval", "calib", "train")
_written_models = copy.deepcopy(config.get("models") or {})
if isinstance(_written_models, dict):
    for _name, _entry in _written_models.items():
        if isinstance(_entry, dict):
            _check_corpus(f"models.{_name}.corpus", _entry.get("corpus"), CORPUS_NAMES)
if isinstance(config.get("claims_options"), dict):
    _check_corpus("claims_options.cross_corpus", config["claims_options"].get("cross_corpus"), ("auto", *CORPUS_NAMES))

validate(config, "../schemas/config.schema.yaml")

MODEL_OVERRIDES = {}
for _name, _entry in _written_models.items():
    MODEL_OVERRIDES[_name] = {group: dict(_entry.get(group) or {}) for group in SETTING_GROUPS}


def _repo_path(value):
    """Resolve a local path from the config against the repository root; hub ids stay as they are."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if value.startswith(".") or (REPO_ROOT / path).exists():
        return str((REPO_ROOT / path).resolve())
    return value


def _registered_methods():
    try:
        from sasq.method import available_methods
    except ImportError as err:
        raise WorkflowError(f"the sasq package is not importable ({err}); run `pip install -e '.[workflow]'` in this environment") from err
    return available_methods()


REGISTRY = _registered_methods()

CONTROL_METHOD = "fp-gain"

if config["methods"] == "all":
    # The fp-gain control is not a quantization method: it runs in the claims section only.
    METHODS = sorted((name for name in REGISTRY if name != CONTROL_METHOD), key=lambda name: (REGISTRY[name].activation != "none", name))
else:
    METHODS = list(config["methods"])
    unknown = [name for name in METHODS if name not in REGISTRY]
    if unknown:
        raise _config_error("methods", f"unknown method(s) {', '.join(unknown)}; use names from `sasq methods`: {', '.join(sorted(REGISTRY))}")

def _corpus_name(key, value):
    """A corpus name from the config, with the path of text:PATH resolved against the repository root."""
    if value is None or not value.startswith("text:"):
        return value
    path = Path(value[len("text:"):]).expanduser()
    path = path if path.is_absolute() else (REPO_ROOT / path).resolve()
    if not path.is_file():
        raise _config_error(key, f"{value}: {path} is not a file; give an existing UTF-8 text file after text:")
    return f"text:{path}"


MODELS = {}
for _name, _entry in config["models"].items():
    MODELS[_name] = dict(_entry, ref=_repo_path(_entry["ref"]))
    # A ref written as a path (./, ../, / or ~) must exist. The job checks source names and hub ids.
    if _entry["ref"].startswith((".", "/", "~")) and not Path(MODELS[_name]["ref"]).exists():
        raise _config_error(f"models.{_name}.ref", f"{MODELS[_name]['ref']} does not exist; give a model folder, a .gguf file, a hub id or a source name")
    if "corpus" in _entry:
        MODELS[_name]["corpus"] = _corpus_name(f"models.{_name}.corpus", _entry["corpus"])
if config["assets_dir"]:
    stories = Path(_repo_path(config["assets_dir"])) / STORIES260K_FOLDER
    if not (stories / "config.json").is_file():
        raise _config_error("assets_dir", f"{stories} has no config.json; point assets_dir at the folder holding {STORIES260K_FOLDER}/")
    MODELS.setdefault("stories260k", {"ref": str(stories)})
if not MODELS:
    raise _config_error("models", "no model configured; add one under models or set assets_dir")

DATA_DIR = _repo_path(config["data_dir"])
# Normalized, so that the default output_dir "." gives "results/..." paths: Snakemake cannot match
# a target named on the command line against an output path that starts with "./".
OUT = os.path.normpath(config["output_dir"] or ".")
RESULTS = os.path.normpath(f"{OUT}/results")
FIGURES = os.path.normpath(f"{OUT}/figures")
RUNS = f"{RESULTS}/runs"

if config["latency"] and importlib.util.find_spec("sasq.latency") is None:
    raise _config_error("latency", "true, but the module sasq.latency is not installed; set latency: false")


def bits_tag(wbits, abits):
    return f"w{wbits}a{abits}"


BIT_TAGS = [bits_tag(b["wbits"], b["abits"]) for b in config["bits"]]
FLOAT_TAG = "float"


def method_tags(method):
    """Bit-width tags a method runs at: one float run for unquantized methods, every config pair else."""
    return [FLOAT_TAG] if REGISTRY[method].activation == "none" else BIT_TAGS


def settings(model, group):
    """The eval, calib or train settings of a model: the global block with the model's overrides on top."""
    return {**config[group], **MODEL_OVERRIDES.get(model, {}).get(group, {})}


def matrix(predicate=lambda method: True):
    """(model, method, bits tag) triples of the config whose method satisfies the predicate."""
    return [(model, method, tag) for model in MODELS for method in METHODS if predicate(REGISTRY[method]) for tag in method_tags(method)]


def rule_resources(rule_name):
    """Resources of a rule: config resources.default, then resources.<rule>, then the model's override."""
    merged = {**config["resources"].get("default", {}), **config["resources"].get(rule_name, {})}
    keys = set(merged)
    for entry in MODELS.values():
        keys |= set(entry.get("resources", {}).get(rule_name, {}))

    def value(key):
        def lookup(wildcards):
            model = getattr(wildcards, "model", None)
            override = MODELS[model].get("resources", {}).get(rule_name, {}) if model else {}
            return override.get(key, merged.get(key))

        return lookup

    return {key: value(key) for key in sorted(keys)}


def scheme_args(wildcards, overrides=None):
    """`sasq` options of the method and bit-width wildcards, shared by every rule that runs a model.

    ``overrides`` (a claims variant) replaces the seed or granularity and may add an observer.
    """
    overrides = overrides or {}
    args = [f"--method {wildcards.method}", f"--model {MODELS[wildcards.model]['ref']}", f"--seed {overrides.get('seed', config['seed'])}"]
    args += [f"--device {config['device']}", f"--dtype {config['dtype']}", f"--granularity {overrides.get('granularity', config['granularity'])}"]
    if "observer" in overrides:
        args.append(f"--observer {overrides['observer']}")
    if config["weight_quantizer"] != "rtn":
        args.append(f"--weight-quantizer {config['weight_quantizer']}")
    if wildcards.bits != FLOAT_TAG:
        wbits, abits = wildcards.bits[1:].split("a")
        args.append(f"--wbits {wbits} --abits {abits}")
    if DATA_DIR:
        args.append(f"--data-dir {DATA_DIR}")
    if TINYSTORIES_DIR:
        args.append(f"--tinystories-dir {TINYSTORIES_DIR}")
    calib = settings(wildcards.model, "calib")
    args.append(f"--calib-split {calib['split']} --calib-seqlen {calib['seqlen']} --calib-windows {calib['windows']}")
    return " ".join(args)


def eval_args(wildcards, windows_key="windows"):
    evaluation = settings(wildcards.model, "eval")
    args = f"--eval-split {evaluation['split']} --seqlen {evaluation['seqlen']}"
    if evaluation[windows_key] is not None:
        args += f" --eval-windows {evaluation[windows_key]}"
    return args


def train_args(wildcards, overrides=None):
    """`sasq train` options; ``overrides`` (a claims variant) may replace the window count or lr."""
    overrides = overrides or {}
    train = settings(wildcards.model, "train")
    lr = overrides.get("lr", train["lr"])
    windows = overrides.get("train_windows", train["windows"])
    args = f"--train-split {train['split']} --train-seqlen {train['seqlen']} --lr {lr} --epochs {train['epochs']}"
    args += f" --checkpoint-every {train['checkpoint_every']}"
    if windows is not None:
        args += f" --train-windows {windows}"
    if train["max_steps"] is not None and "train_windows" not in overrides:
        args += f" --max-steps {train['max_steps']}"
    return args


def scales_for(wildcards):
    """Scales file that `sasq evaluate` loads: trained scales, calibrated scales, or none (dynamic, float)."""
    method = REGISTRY[wildcards.method]
    if method.trains:
        return f"{RUNS}/{wildcards.model}/train/{wildcards.method}-{wildcards.bits}.safetensors"
    if method.activation == "static":
        return f"{RUNS}/{wildcards.model}/calibrate/{wildcards.method}-{wildcards.bits}.safetensors"
    return []


def evaluation_jsons():
    return [f"{RUNS}/{model}/evaluate/{method}-{tag}.json" for model, method, tag in matrix()]


def training_jsons():
    return [f"{RUNS}/{model}/train/{method}-{tag}.json" for model, method, tag in matrix(lambda m: m.trains)]


DIAGNOSED = [name for name in ("sasq-init", "sasq") if name in METHODS]


def diagnose_jsons():
    return [f"{RUNS}/{model}/diagnose/{method}-{tag}.json" for model in MODELS for method in DIAGNOSED for tag in BIT_TAGS]


FIGURE_NAMES = ["ppl_vs_bits", "ppl_vs_model_size", "sasq_loss_curve", "activation_absmax"]


def final_targets():
    targets = [f"{RESULTS}/ppl.csv", f"{RESULTS}/report.md"]
    targets += [f"{FIGURES}/{name}.png" for name in FIGURE_NAMES]
    if config["latency"]:
        targets += [f"{RESULTS}/latency.csv", f"{FIGURES}/latency.png"]
    if CLAIMS_ON:
        targets.append(f"{RESULTS}/claims.md")
    return targets



# Claims section: controls, a second corpus, seeds, ablations, generation and zero-shot runs.
# Each claims run is SASQ, its init or the fp-gain control with a few settings replaced; a
# variant name maps to those replacements and appears in file names and tables.

CLAIMS = config["claims_options"]
CLAIMS_ON = config["claims"]
CLAIM_TAG = bits_tag(CLAIMS["wbits"], CLAIMS["abits"])


def _tinystories_dir():
    if config["tinystories_dir"]:
        folder = _repo_path(config["tinystories_dir"])
        if not (Path(folder) / "tinystories_train_head.txt").is_file():
            raise _config_error("tinystories_dir", f"{folder} has no tinystories_train_head.txt; point it at the folder holding that file, or set null")
        return folder
    if os.environ.get("SASQ_TINYSTORIES_DIR"):
        return os.environ["SASQ_TINYSTORIES_DIR"]
    if config["assets_dir"]:
        candidate = Path(_repo_path(config["assets_dir"])) / "tinystories"
        if (candidate / "tinystories_train_head.txt").is_file():
            return str(candidate)
    return None


TINYSTORIES_DIR = _tinystories_dir()
ZEROSHOT_AVAILABLE = importlib.util.find_spec("lm_eval") is not None
if CLAIMS["cross_corpus"] == "auto":
    CROSS_CORPUS = "tinystories" if TINYSTORIES_DIR else "pydoc"
else:
    CROSS_CORPUS = _corpus_name("claims_options.cross_corpus", CLAIMS["cross_corpus"])
if CROSS_CORPUS == "tinystories" and not TINYSTORIES_DIR:
    raise _config_error("claims_options.cross_corpus", "tinystories, but no TinyStories folder is known; set tinystories_dir or $SASQ_TINYSTORIES_DIR, or use auto")
for _name, _entry in MODELS.items():
    if _entry.get("corpus") == "tinystories" and not TINYSTORIES_DIR:
        raise _config_error(f"models.{_name}.corpus", "tinystories, but no TinyStories folder is known; set tinystories_dir or $SASQ_TINYSTORIES_DIR")

# Every job reads its corpus name from a file: prepare_data's choice (WikiText-2 or the pydoc
# fallback), or the model's own corpus when its config entry names one (stories260K knows only
# TinyStories). The shell word SHARED_CORPUS reads prepare_data's choice.
SHARED_CORPUS_FILE = f"{RESULTS}/data/corpus.name"
SHARED_CORPUS = f"$(cat {SHARED_CORPUS_FILE})"


def corpus_file(wildcards):
    """File naming the corpus a model is calibrated, trained and scored on."""
    if MODELS[wildcards.model].get("corpus"):
        return f"{RESULTS}/data/corpus-{wildcards.model}.name"
    return SHARED_CORPUS_FILE


def cross_corpus(model):
    """Shell word for a model's second corpus: CROSS_CORPUS, or the shared corpus when CROSS_CORPUS is the model's own."""
    return SHARED_CORPUS if MODELS[model].get("corpus") == CROSS_CORPUS else CROSS_CORPUS


def reads_shared_corpus(model):
    """Whether a model's jobs read prepare_data's corpus: as their own, or as the claims section's second corpus."""
    return not MODELS[model].get("corpus") or (CLAIMS_ON and cross_corpus(model) == SHARED_CORPUS)


# WikiText-2 is the shared corpus unless it falls back to pydoc, which is known only at run time.
if CLAIMS_ON:
    for _name, _entry in MODELS.items():
        _own = _entry.get("corpus") or "wikitext2"
        _second = cross_corpus(_name)
        if _second == SHARED_CORPUS:
            _second = "wikitext2"
        if _second == _own:
            raise _config_error(
                "claims_options.cross_corpus",
                f"{CROSS_CORPUS} leaves model {_name} without a second corpus (its own is {_own}); choose another cross_corpus",
            )
if CLAIMS_ON and CONTROL_METHOD not in REGISTRY:
    raise _config_error("claims", f"true, but the method {CONTROL_METHOD} is not registered; set claims: false")


CROSS_TRAINED = "trained-on-cross"


def _claim_variants():
    """Variant name to (method, overrides); the overrides replace the base run's settings."""
    variants = {}
    for seed in CLAIMS["seeds"]:
        variants[f"seed{seed}"] = {"seed": seed}
    for observer in CLAIMS["observers"]:
        variants[f"init-{observer}"] = {"observer": observer}
    if CLAIMS["granularity_ablation"]:
        other = "per-channel" if config["granularity"] == "per-tensor" else "per-tensor"
        variants[other] = {"granularity": other}
    for windows in CLAIMS["train_windows"]:
        variants[f"windows{windows}"] = {"train_windows": windows}
    for lr in CLAIMS["lrs"]:
        variants[f"lr{lr:g}"] = {"lr": lr}
    variants[CROSS_TRAINED] = {"train_corpus": "cross"}
    return variants


CLAIM_VARIANTS = _claim_variants()


def claim_runs():
    """(method, variant) pairs of the claims section: which trained or calibrated scales to make."""
    runs = [(method, f"seed{seed}") for method in ("sasq", CONTROL_METHOD) for seed in CLAIMS["seeds"]]
    runs += [(method, f"init-{observer}") for method in ("sasq-init", "sasq") for observer in CLAIMS["observers"]]
    if CLAIMS["granularity_ablation"]:
        other = "per-channel" if config["granularity"] == "per-tensor" else "per-tensor"
        runs += [("sasq-init", other), ("sasq", other)]
    runs += [("sasq", f"windows{windows}") for windows in CLAIMS["train_windows"]]
    runs += [("sasq", f"lr{lr:g}") for lr in CLAIMS["lrs"]]
    runs += [("sasq", CROSS_TRAINED), (CONTROL_METHOD, CROSS_TRAINED)]
    return runs


def claim_tag(method):
    return FLOAT_TAG if REGISTRY[method].activation == "none" else CLAIM_TAG


def claim_scheme_args(wildcards):
    return scheme_args(wildcards, CLAIM_VARIANTS[wildcards.variant])


def claim_train_args(wildcards):
    return train_args(wildcards, CLAIM_VARIANTS[wildcards.variant])


def claim_train_corpus(wildcards):
    """Shell word of the corpus a claims run calibrates and trains on: the model's own, or its second corpus."""
    return cross_corpus(wildcards.model) if CLAIM_VARIANTS[wildcards.variant].get("train_corpus") == "cross" else "$base"


def claim_scored_corpus(wildcards):
    """Shell word of the corpus a claims evaluation scores: the model's own (base) or its second corpus (cross)."""
    return "$base" if wildcards.scored == "base" else cross_corpus(wildcards.model)


def shared_corpus_input(wildcards):
    """prepare_data's corpus file when a job's shell reads it as the second corpus, else nothing."""
    variant = getattr(wildcards, "variant", None)
    scored = getattr(wildcards, "scored", None)
    reads_cross = variant is None or scored == "cross" or CLAIM_VARIANTS[variant].get("train_corpus") == "cross"
    return [SHARED_CORPUS_FILE] if reads_cross and cross_corpus(wildcards.model) == SHARED_CORPUS else []


def claim_scales(wildcards):
    """Scales file of a claims run: trained for trained methods, calibrated for sasq-init, none for fp."""
    kind = "train" if REGISTRY[wildcards.method].trains else "calibrate"
    return f"{RUNS}/{wildcards.model}/claims/{kind}/{wildcards.method}-{wildcards.bits}-{wildcards.variant}.safetensors"


def claims_jsons():
    """Every JSON the claims section reads."""
    if not CLAIMS_ON:
        return []
    paths = []
    for model in MODELS:
        # Every claims run is scored on the main corpus, and the seed runs also on the second one.
        for method, variant in claim_runs():
            scored = ("base", "cross") if variant.startswith("seed") else ("base",)
            paths += [f"{RUNS}/{model}/claims/evaluate/{method}-{claim_tag(method)}-{variant}-{name}.json" for name in scored]
        paths += [f"{RUNS}/{model}/cross/{method}-{claim_tag(method)}.json" for method in METHODS]
        if CLAIMS["generation_tokens"]:
            paths += [f"{RUNS}/{model}/generate/{method}-{claim_tag(method)}.json" for method in METHODS]
        if CLAIMS["zeroshot_tasks"] and ZEROSHOT_AVAILABLE:
            paths += [f"{RUNS}/{model}/zeroshot/{method}-{claim_tag(method)}.json" for method in METHODS]
    return paths


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9._-]*",
    method="|".join(re.escape(name) for name in sorted(REGISTRY)),
    bits=f"{FLOAT_TAG}|w[2-8]a[2-8]",
    variant="|".join(re.escape(name) for name in CLAIM_VARIANTS) or "[^/]+",
    scored="base|cross",
