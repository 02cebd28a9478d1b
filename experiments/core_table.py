"""Print the core SmolLM2-135M table (markdown) from the JSON rows in a results folder.

Usage: python experiments/core_table.py results/core
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["fp", "dynamic", "static-minmax", "sasq-init", "sasq"]


def main(folder: str) -> None:
    rows = [json.loads(path.read_text()) for path in sorted(Path(folder).glob("*.json")) if "ppl" in json.loads(path.read_text())]
    rows.sort(key=lambda r: (r["eval_windows"], -(r["wbits"] or 16), ORDER.index(r["method"]) if r["method"] in ORDER else 99, r["granularity"]))
    print("| method | W/A | activation scales | calib windows | train windows | eval windows × seqlen | PPL | wall time (s) |")
    print("| --- | --- | --- | ---: | ---: | --- | ---: | ---: |")
    for r in rows:
        bits = "16/16 (fp32)" if r["wbits"] is None else f"W{r['wbits']}A{r['abits']}"
        calib = f"{r['calib_windows']} × {r['calib_seqlen']}" if r.get("calib_windows") else "–"
        train = f"{r['train_windows']} × {r.get('train_seqlen')}" if r.get("train_windows") else "–"
        print(
            f"| {r['method']} | {bits} | {r['granularity']} | {calib} | {train} | {r['eval_windows']} × {r['seqlen']} "
            f"| {r['ppl']:.3f} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
