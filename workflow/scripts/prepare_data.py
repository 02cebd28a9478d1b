"""Choose the corpus of every job: WikiText-2 from data_dir or the hub, else the pydoc fallback.

Writes ``corpus.json`` (name, sources per split, whether the fallback is in use) for the report
and ``corpus.name`` (the bare name) that the shell commands pass as ``--*-corpus``.
"""

import json
import logging
from pathlib import Path

from sasq.data import load_corpus

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
log = logging.getLogger("prepare_data")

data_dir = snakemake.params.data_dir
splits = list(snakemake.params.splits)
try:
    sources = {split: load_corpus("wikitext2", split, data_dir).source for split in splits}
    name, fallback, reason = "wikitext2", False, None
except (FileNotFoundError, ValueError) as err:
    if not snakemake.params.allow_fallback:
        raise RuntimeError(f"WikiText-2 is not reachable and allow_fallback_corpus is false: {err}") from err
    reason = str(err)
    name, fallback = "pydoc", True
    sources = {split: load_corpus("pydoc", split).source for split in splits}
    banner = "=" * 78
    message = (
        f"\n{banner}\nWARNING: WikiText-2 is not reachable ({reason}).\n"
        "Every job uses the fallback corpus 'pydoc' (the standard library's pydoc topics text).\n"
        "These perplexities are NOT comparable with any published WikiText-2 number.\n"
        "Set data_dir to a folder with wiki.test.raw and wiki.valid.raw, or set\n"
        f"allow_fallback_corpus: false to fail instead.\n{banner}"
    )
    log.warning(message)
    print(message, flush=True)

info = {"corpus": name, "fallback": fallback, "reason": reason, "data_dir": data_dir, "sources": sources}
Path(snakemake.output.info).write_text(json.dumps(info, indent=2) + "\n")
Path(snakemake.output.name).write_text(name + "\n")
