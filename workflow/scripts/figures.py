"""Draw the workflow's figures from results/ppl.csv and the train and diagnose JSONs.

* ppl_vs_bits.png: perplexity against bit-width, one line per method, one panel per model;
* ppl_vs_model_size.png: perplexity against parameter count, one panel per bit-width and corpus;
* sasq_loss_curve.png: the ``loss_curve`` of every `sasq train` job;
* activation_absmax.png: per quantizer, the activation abs-max and the clipping range
  (``range_max``) of the sasq-init scales and of the trained sasq scales.

A figure whose data the config does not produce (no trained method, for example) shows a note in its panel instead.
"""

import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402
import pandas as pd  # noqa: E402

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
log = logging.getLogger("figures")

FLOAT_TAG = "float"
table = pd.read_csv(snakemake.input.ppl)
bit_tags = list(snakemake.params.bit_tags)
methods = [name for name in snakemake.params.method_order if name in set(table["method"])]
models = list(dict.fromkeys(table["model"]))
model_corpus = table.groupby("model")["eval_corpus"].first().to_dict()
split = ", ".join(sorted(set(table["eval_split"])))
outputs = {Path(path).stem: path for path in snakemake.output}


def empty_panel(axis, message):
    axis.text(0.5, 0.5, message, ha="center", va="center", transform=axis.transAxes)
    axis.set_axis_off()


def plain_log_axis(axis):
    """Label a log-scale y axis with plain numbers (95, 120) instead of powers of ten."""
    axis.yaxis.set_major_formatter(ScalarFormatter())
    axis.yaxis.set_minor_formatter(ScalarFormatter())


def save(figure, name):
    figure.tight_layout()
    figure.savefig(outputs[name], dpi=120)
    plt.close(figure)
    log.info("wrote %s", outputs[name])


def ppl_vs_bits():
    # Order bit-widths from most to fewest bits, so the curves read left to right as compression grows.
    order = sorted(bit_tags, key=lambda tag: tuple(-int(part) for part in tag[1:].split("a")))
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for axis, model in zip(axes[0], models):
        rows = table[table["model"] == model]
        for method in methods:
            if method == "fp":
                continue
            points = rows[rows["method"] == method].set_index("bits")["ppl"].reindex(order)
            axis.plot([tag.upper() for tag in order], points.values, marker="o", label=method)
        fp = rows.loc[rows["method"] == "fp", "ppl"]
        if len(fp):
            axis.axhline(float(fp.iloc[0]), color="black", linestyle="--", label="fp (unquantized)")
        axis.set_yscale("log")
        plain_log_axis(axis)
        axis.set_title(f"{model}: perplexity against bit-width")
        axis.set_xlabel("weight / activation bits")
        axis.set_ylabel(f"perplexity ({model_corpus[model]} {split} split, log scale)")
        axis.legend(fontsize="small")
    save(figure, "ppl_vs_bits")


def ppl_vs_model_size():
    # Perplexities on different corpora do not share an axis: one row of panels per corpus.
    corpora = sorted(set(model_corpus.values()))
    figure, axes = plt.subplots(len(corpora), len(bit_tags), figsize=(6 * len(bit_tags), 4.5 * len(corpora)), squeeze=False)
    for row, name in zip(axes, corpora):
        scored = table[table["model"].map(model_corpus) == name]
        for axis, tag in zip(row, bit_tags):
            for method in methods:
                rows = scored[(scored["method"] == method) & (scored["bits"] == (FLOAT_TAG if method == "fp" else tag))].sort_values("parameters")
                axis.plot(rows["parameters"] / 1e6, rows["ppl"], marker="o", linestyle="--" if method == "fp" else "-", label=method)
            axis.set_xscale("log")
            axis.set_yscale("log")
            plain_log_axis(axis)
            axis.set_title(f"Perplexity against model size, {tag.upper()}, {name}")
            axis.set_xlabel("parameters (millions, log scale)")
            axis.set_ylabel(f"perplexity ({name} {split} split, log scale)")
            axis.legend(fontsize="small")
    save(figure, "ppl_vs_model_size")


def loss_curves():
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for path in map(Path, snakemake.input.train):
        row = json.loads(path.read_text())
        method, bits = path.stem.rsplit("-", 1)
        axis.plot(range(1, len(row["loss_curve"]) + 1), row["loss_curve"], label=f"{path.parent.parent.name} {method} {bits.upper()}")
    if not snakemake.input.train:
        empty_panel(axis, "no trained method in this config")
    else:
        axis.set_xlabel("optimiser step")
        axis.set_ylabel("training loss (cross-entropy, nats/token)")
        axis.legend(fontsize="small")
    axis.set_title("SASQ scale training: loss per step")
    save(figure, "sasq_loss_curve")


def activation_absmax():
    runs = {}
    for path in map(Path, snakemake.input.diagnose):
        method, bits = path.stem.rsplit("-", 1)
        runs[(path.parent.parent.name, bits, method)] = json.loads(path.read_text())["quantizers"]
    panels = sorted({(model, bits) for model, bits, _ in runs})
    figure, axes = plt.subplots(len(panels) or 1, 1, figsize=(12, 3.8 * max(len(panels), 1)), squeeze=False)
    if not panels:
        empty_panel(axes[0][0], "sasq-init and sasq are not in this config's methods")
        axes[0][0].set_title("Activation abs-max and clipping range per quantizer")
    for axis, (model, bits) in zip(axes[:, 0], panels):
        init, trained = runs.get((model, bits, "sasq-init")), runs.get((model, bits, "sasq"))
        reference = init or trained
        names = [row["quantizer"] for row in reference]
        positions = range(len(names))
        axis.plot(positions, [row["abs_max"] for row in reference], "k.", label="activation abs-max |x| (observed)")
        if init:
            axis.plot(positions, [row["range_max"] for row in init], "o", fillstyle="none", label="clipping range, sasq-init (calibrated)")
        if trained:
            axis.plot(positions, [row["range_max"] for row in trained], "x", label="clipping range, sasq (trained)")
        axis.set_yscale("log")
        axis.set_xticks(list(positions), names, rotation=90, fontsize="x-small")
        axis.set_ylabel("magnitude (activation units, log scale)")
        axis.set_title(f"{model} {bits.upper()}: activation abs-max and clipping range before and after training")
        axis.legend(fontsize="small")
    save(figure, "activation_absmax")


ppl_vs_bits()
ppl_vs_model_size()
loss_curves()
activation_absmax()
