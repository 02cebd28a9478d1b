"""Print the core SmolLM2-135M tables (markdown) from the JSON rows in a results folder.

Usage: python experiments/core_table.py results/core
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["fp", "dynamic", "static-minmax", "sasq-init", "sasq"]


def train_seconds(row: dict) -> str:
    """Wall time of the `sasq train` run that made a row's scales, or a dash."""
    if not row.get("scales") or not row.get("train_windows"):
        return "–"
    train_json = Path(row["scales"]).with_suffix(".json")
    return f"{json.loads(train_json.read_text())['seconds']:.0f}" if train_json.exists() else "?"


def diagnose_table(folder: Path, top: int = 12) -> None:
    """Print the quantizers with the largest relative error after training, beside their initial values."""
    init_path, trained_path = folder / "diagnose-init-w8a8.json", folder / "diagnose-sasq-w8a8-per-tensor.json"
    if not (init_path.exists() and trained_path.exists()):
        return
    init = {r["quantizer"]: r for r in json.loads(init_path.read_text())["quantizers"]}
    trained = sorted(json.loads(trained_path.read_text())["quantizers"], key=lambda r: -r["rel_error"])
    print()
    print("| quantizer | abs-max seen | range init → trained | rel. error init → trained | of it clipping (trained) | clipped share (trained) |")
    print("| --- | ---: | --- | --- | ---: | ---: |")
    for r in trained[:top]:
        i = init[r["quantizer"]]
        print(
            f"| {r['quantizer']} | {r['abs_max']:.1f} | {i['range_max']:.1f} → {r['range_max']:.1f} "
            f"| {i['rel_error']:.4f} → {r['rel_error']:.4f} | {r['clip_error']:.4f} | {r['clip_fraction']:.2e} |"
        )
    total_init = sum(r["rel_error"] for r in init.values())
    total_trained = sum(r["rel_error"] for r in trained)
    print(f"\nSum of relative errors over all {len(trained)} quantizers: {total_init:.3f} (init) → {total_trained:.3f} (trained).")


def main(folder: str) -> None:
    rows = [json.loads(path.read_text()) for path in sorted(Path(folder).glob("*.json")) if "ppl" in json.loads(path.read_text())]
    rows.sort(key=lambda r: (r["eval_windows"], -(r["wbits"] or 16), ORDER.index(r["method"]) if r["method"] in ORDER else 99, r["granularity"]))
    print("| method | W/A | activation scales | calib windows | train windows | eval windows × seqlen | PPL | evaluate (s) | train (s) |")
    print("| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        bits = "16/16 (fp32)" if r["wbits"] is None else f"W{r['wbits']}A{r['abits']}"
        calib = f"{r['calib_windows']} × {r['calib_seqlen']}" if r.get("calib_windows") else "–"
        train = f"{r['train_windows']} × {r.get('train_seqlen')}" if r.get("train_windows") else "–"
        print(
            f"| {r['method']} | {bits} | {r['granularity']} | {calib} | {train} | {r['eval_windows']} × {r['seqlen']} "
            f"| {r['ppl']:.3f} | {r['seconds']:.0f} | {train_seconds(r)} |"
        )
    diagnose_table(Path(folder))


if __name__ == "__main__":
    main(sys.argv[1])
