"""Collect the `sasq evaluate` JSONs into one tidy CSV: one row per (model, method, bits).

The ``model`` column is the config's model name (the folder name under results/runs/); the
row's own model name moves to ``model_name``. ``parameters`` comes from prepare_model and
``corpus_fallback`` from prepare_data, so every row records which corpus it was scored on.
"""

import json
import logging
from pathlib import Path

import pandas as pd

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
log = logging.getLogger("collect")

FIRST_COLUMNS = [
    "model", "method", "bits", "wbits", "abits", "granularity", "weight_quantizer", "ppl",
    "eval_corpus", "eval_split", "eval_source", "seqlen", "eval_windows", "eval_tokens",
    "calib_corpus", "calib_windows", "calib_seqlen", "train_corpus", "train_windows", "train_seqlen",
    "corpus_fallback", "parameters", "model_name", "model_ref", "seed", "dtype", "device", "seconds",
    "torch", "transformers", "python", "git_commit",
]

corpus = json.loads(Path(snakemake.input.corpus).read_text())
parameters = {}
for path in snakemake.input.models:
    info = json.loads(Path(path).read_text())
    parameters[info["model"]] = info["parameters"]

rows = []
for path in map(Path, snakemake.input.runs):
    row = json.loads(path.read_text())
    method, bits = path.stem.rsplit("-", 1)
    model = path.parent.parent.name
    if row["method"] != method:
        raise ValueError(f"{path} contains method {row['method']!r}, but its file name gives {method!r}; delete the file and rerun")
    row["model_name"] = row.pop("model")
    row.update(model=model, bits=bits, parameters=parameters[model], corpus_fallback=corpus["fallback"] and row["eval_corpus"] == corpus["corpus"])
    rows.append(row)

table = pd.DataFrame(rows)
# Float methods have no bit-widths, so these columns hold gaps; keep the rest as integers.
for column in ("wbits", "abits", "calib_windows", "calib_seqlen", "train_windows", "train_seqlen", "eval_windows", "seqlen"):
    if column in table.columns:
        table[column] = table[column].astype("Int64")
order = {name: index for index, name in enumerate(snakemake.params.method_order)}
table = table.sort_values(["model", "method", "bits"], key=lambda column: column.map(order) if column.name == "method" else column)
columns = [name for name in FIRST_COLUMNS if name in table.columns]
columns += [name for name in table.columns if name not in columns]
table[columns].to_csv(snakemake.output[0], index=False)
log.info("wrote %d rows to %s", len(table), snakemake.output[0])
