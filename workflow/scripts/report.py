"""Write results/report.md: the corpus and settings, then paper-style perplexity tables.

Table layout: rows are methods (the unquantized ``fp`` row first), columns are model × bit-width.
A published LLaMA value from workflow/resources/published_ppl.yaml is shown in a "published"
column beside ours only when the model, method, bits and granularity match and our run used the
published protocol (WikiText-2 test, 2048-token windows, every window).
"""

import json
import logging
from pathlib import Path

import pandas as pd
import yaml

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
log = logging.getLogger("report")

FLOAT_TAG = "float"
PROTOCOL_SEQLEN = 2048

table = pd.read_csv(snakemake.input.ppl)
corpus = json.loads(Path(snakemake.input.corpus).read_text())
published = yaml.safe_load(Path(snakemake.input.published).read_text())
models = snakemake.params.models
bit_tags = list(snakemake.params.bit_tags)
method_order = [name for name in snakemake.params.method_order if name in set(table["method"])]
settings = snakemake.params.config
output = Path(snakemake.output[0])


# Corpus each model was scored on: prepare_data's choice, or the model's own (config key corpus).
model_corpus = table.groupby("model")["eval_corpus"].first().to_dict()


def follows_protocol(model):
    evaluation = models[model]["eval"]
    return model_corpus.get(model) == "wikitext2" and evaluation["split"] == "test" and evaluation["seqlen"] == PROTOCOL_SEQLEN and evaluation["windows"] is None


def published_value(model, method, bits):
    if settings["granularity"] != "per-tensor" or not follows_protocol(model):
        return None
    for entry in published:
        if entry["model_ref"] == models[model]["ref"] and entry["method"] == method and entry["bits"] == bits:
            return entry
    return None


def cell(value):
    return "–" if pd.isna(value) else f"{value:.3f}"


def ppl_table(granularity_rows):
    """Markdown table: methods × (model, bits), fp first, with published columns where they apply."""
    lookup = {(row.model, row.method, row.bits): row.ppl for row in granularity_rows.itertuples()}
    columns, notes = [], []
    for model in models:
        for bits in bit_tags:
            columns.append((model, bits, False))
            if any(published_value(model, method, bits if method != "fp" else FLOAT_TAG) for method in method_order):
                columns.append((model, bits, True))
    header = "| method | " + " | ".join(f"{model} {bits.upper()}" + (" published" if is_published else "") for model, bits, is_published in columns) + " |"
    lines = [header, "|" + " --- |" * (len(columns) + 1)]
    for method in method_order:
        cells = []
        for model, bits, is_published in columns:
            run_bits = FLOAT_TAG if method == "fp" else bits
            if not is_published:
                cells.append(cell(lookup.get((model, method, run_bits), float("nan"))))
                continue
            entry = published_value(model, method, run_bits)
            if entry is None:
                cells.append("")
                continue
            if entry not in notes:
                notes.append(entry)
            cells.append(f"{entry['ppl']:.3f} [{notes.index(entry) + 1}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for number, entry in enumerate(notes, start=1):
        setting = f" Setting: {entry['setting']}." if entry.get("setting") else ""
        lines.append("")
        lines.append(f"[{number}] {entry['source']}.{setting}")
    return lines


def latency_section(bench):
    """Build the report section of the latency benchmark: median milliseconds per variant and case."""
    device = ", ".join(sorted(set(bench["device"].astype(str))))
    out = [
        f"## Latency ({device})",
        "",
        "Median wall time in ms (`python -m sasq.latency`, written to `results/latency.csv`). static/dynamic is",
        "int8-static time over int8-dynamic time (below 1: static is faster); int GEMM share is int8-static",
        "throughput as a fraction of the raw `torch._int_mm` on the same shape.",
        "",
        "| case | fp32 | bf16 | int8-static | int8-dynamic | static/dynamic | int GEMM share |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cases = bench[bench["variant"].isin(["fp32", "bf16", "int8-static", "int8-dynamic"])]
    for (shape, phase, tokens), group in cases.groupby(["model_or_shape", "phase", "tokens"], sort=False):
        times = dict(zip(group["variant"], group["median_ms"]))
        static = group[group["variant"] == "int8-static"]
        ratio = static["ratio_int8_dynamic"].iloc[0] if len(static) else None
        share = (static["gop_s"] / static["int_gemm_gop_s"]).iloc[0] if len(static) else None
        context = group["context"].iloc[0]
        label = f"{shape} decode, 1 token after {int(context)}" if phase == "decode" else f"{shape} {phase}, {tokens} tokens"
        out.append(
            f"| {label} | {cell(times.get('fp32'))} | {cell(times.get('bf16'))} "
            f"| {cell(times.get('int8-static'))} | {cell(times.get('int8-dynamic'))} | {cell(ratio)} | {cell(share)} |"
        )
    return out + [""]


lines = ["# SASQ workflow report", ""]
fallback_models = sorted(name for name, scored in model_corpus.items() if corpus["fallback"] and scored == corpus["corpus"])
if fallback_models:
    lines += [
        "> **WARNING: WikiText-2 was not reachable, so the numbers of " + ", ".join(f"`{name}`" for name in fallback_models),
        "> were measured on the fallback corpus `pydoc` (the Python standard library's pydoc topics text).**",
        f"> These perplexities are not comparable with published WikiText-2 values. Reason: {corpus['reason']}",
        "",
    ]
lines += [
    f"- Corpus: `{corpus['corpus']}`" + (" (fallback)" if corpus["fallback"] else "")
    + ("; models with a corpus of their own list it in the table below" if set(model_corpus.values()) - {corpus["corpus"]} else ""),
    *[f"  - split `{split}`: {source}" for split, source in corpus["sources"].items()],
    f"- Seed {settings['seed']}, device `{settings['device']}`, dtype `{settings['dtype']}`, "
    f"static scales {settings['granularity']}, weights {settings['weight_quantizer']} (symmetric, per output channel)",
    f"- Code: git commit {', '.join(sorted(set(table['git_commit'].astype(str))))}; "
    f"torch {', '.join(sorted(set(table['torch'].astype(str))))}, transformers {', '.join(sorted(set(table['transformers'].astype(str))))}",
    "",
    "| model | reference | parameters | corpus | eval windows × seqlen | calibration windows × seqlen | training windows × seqlen |",
    "| --- | --- | ---: | --- | --- | --- | --- |",
]
parameters = table.groupby("model")["parameters"].first()
for name, model in models.items():
    evaluation, calib, train = model["eval"], model["calib"], model["train"]
    scored = table.loc[table["model"] == name, "eval_windows"]
    windows = f"{int(scored.max())}" if len(scored) else "–"
    training = f"{train['windows'] or 'all'} × {train['seqlen']}" + (f", at most {train['max_steps']} steps" if train["max_steps"] else "")
    lines.append(
        f"| {name} | `{model['ref']}` | {parameters.get(name, float('nan')) / 1e6:.2f} M | `{model_corpus.get(name, '–')}` "
        f"| {windows} × {evaluation['seqlen']} ({evaluation['split']}) "
        f"| {calib['windows']} × {calib['seqlen']} ({calib['split']}) | {training} ({train['split']}) |"
    )
lines += [
    "",
    f"## Perplexity ({', '.join(sorted(set(model_corpus.values())))} {', '.join(sorted({m['eval']['split'] for m in models.values()}))}, lower is better)",
    "",
    "Token-level perplexity over non-overlapping windows; W*x*A*y* = *x*-bit weights (RTN or GPTQ, per output",
    "channel) and *y*-bit activations. The `fp` row is the unquantized model, repeated under every bit-width.",
    "",
]
lines += ppl_table(table)
lines += [
    "",
    "## Figures",
    "",
    "- `figures/ppl_vs_bits.png`: perplexity against bit-width per method",
    "- `figures/ppl_vs_model_size.png`: perplexity against parameter count",
    "- `figures/sasq_loss_curve.png`: training loss of every trained method",
    "- `figures/activation_absmax.png`: per-quantizer activation abs-max and clipping range before and after training",
    "",
]
if snakemake.input.claims:
    lines += Path(snakemake.input.claims[0]).read_text().splitlines() + [""]
if snakemake.input.latency:
    lines += latency_section(pd.read_csv(snakemake.input.latency[0]))
if snakemake.input.train:
    lines += ["## Scale training", "", "| model | method | bits | steps | first loss | last loss | seconds |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for path in map(Path, snakemake.input.train):
        row = json.loads(path.read_text())
        curve = row["loss_curve"]
        method, bits = path.stem.rsplit("-", 1)
        first, last = (f"{curve[0]:.4f}", f"{curve[-1]:.4f}") if curve else ("–", "–")
        lines.append(f"| {path.parent.parent.name} | {method} | {bits.upper()} | {row['steps']} | {first} | {last} | {row['train_seconds']:.1f} |")
    lines.append("")

output.write_text("\n".join(lines) + "\n")
log.info("wrote %s", output)
