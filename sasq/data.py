"""Text corpora, tokenization and the windows used for evaluation, calibration and training.

Corpora are named ``NAME`` (with a split) or ``text:PATH`` for any UTF-8 file:

* ``wikitext2``: WikiText-2 raw, splits ``test``, ``validation``, ``train``. Read from local raw
  files (``wiki.test.raw``, ``wiki.valid.raw``, ``wiki.train.raw``) in the folder given as
  ``data_dir`` or ``$SASQ_WIKITEXT_DIR``, else from the ``datasets`` hub copy. Both give exactly
  the rows of ``load_dataset("wikitext", "wikitext-2-raw-v1")``, joined with ``"\\n\\n"``.
* ``tinystories``: the TinyStories text ``tinystories_train_head.txt`` in the folder given as
  ``tinystories_dir`` or ``$SASQ_TINYSTORIES_DIR``. Splits ``validation`` and ``train`` are the
  text before the first blank line after 80 % of the characters, ``test`` the text after that
  blank line, so scales trained on TinyStories are never scored on the stories they saw.
* ``pydoc``: the Python documentation topics that every CPython install carries
  (``pydoc_data.topics.topics``, values joined with ``"\n\n"`` in sorted key order), a real
  English corpus for machines that reach neither local WikiText-2 files nor the hub. Splits
  ``validation`` and ``train`` are the first 90 % of the characters, ``test`` the last 10 %;
  the text differs between Python versions, so its perplexities are comparable only within one.
* ``text:PATH``: a plain text file, used as it is.

Example:
    >>> rows = raw_to_rows(" = Title = \\n \\n Text .\\n")
    >>> rows
    [' = Title = \\n', '', ' Text .\\n']
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

WIKITEXT_FILES = {"test": "wiki.test.raw", "validation": "wiki.valid.raw", "train": "wiki.train.raw"}
SPLIT_ALIASES = {"valid": "validation", "val": "validation"}
TINYSTORIES_FILE = "tinystories_train_head.txt"
PYDOC_TRAIN_FRACTION = 0.9
TINYSTORIES_TRAIN_FRACTION = 0.8


@dataclass(frozen=True)
class Corpus:
    """A loaded text with where it came from (recorded in result rows)."""

    name: str
    split: str
    text: str
    source: str


def raw_to_rows(raw: str) -> list[str]:
    """Rows of the ``datasets`` WikiText copy from an official ``.raw`` file.

    Each line keeps its newline; whitespace-only lines become empty strings.
    """
    return [line if line.strip() else "" for line in raw.splitlines(keepends=True)]


def _wikitext_dir(data_dir: str | None) -> Path | None:
    chosen = data_dir or os.environ.get("SASQ_WIKITEXT_DIR")
    return Path(chosen).expanduser() if chosen else None


def load_wikitext2(split: str, data_dir: str | None = None) -> Corpus:
    """WikiText-2 raw as the ``"\\n\\n"``-joined string that GPTQ-style perplexity tokenizes."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in WIKITEXT_FILES:
        raise ValueError(f"WikiText-2 split {split!r} is unknown; use one of {', '.join(WIKITEXT_FILES)}")
    folder = _wikitext_dir(data_dir)
    looked = []
    if folder is not None:
        path = folder / WIKITEXT_FILES[split]
        if path.is_file():
            rows = raw_to_rows(path.read_text(encoding="utf-8"))
            return Corpus("wikitext2", split, "\n\n".join(rows), str(path))
        looked.append(str(path))
    try:
        from datasets import load_dataset

        rows = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
        return Corpus("wikitext2", split, "\n\n".join(rows), "hub:wikitext/wikitext-2-raw-v1")
    except Exception as err:  # noqa: BLE001 - any failure of the hub path means: not reachable
        looked.append(f"the datasets hub ({type(err).__name__})")
    raise FileNotFoundError(
        f"WikiText-2 {split} not found (looked in {'; '.join(looked)}); "
        f"set SASQ_WIKITEXT_DIR or --data-dir to a folder holding {WIKITEXT_FILES[split]}"
    )


def load_pydoc_topics(split: str) -> Corpus:
    """Load the standard library's pydoc topics text, split by characters: 90 % validation/train, 10 % test."""
    import platform

    from pydoc_data.topics import topics

    split = SPLIT_ALIASES.get(split, split)
    text = "\n\n".join(topics[key] for key in sorted(topics))
    cut = int(len(text) * PYDOC_TRAIN_FRACTION)
    if split in ("validation", "train"):
        part = text[:cut]
    elif split == "test":
        part = text[cut:]
    else:
        raise ValueError(f"pydoc split {split!r} is unknown; use validation, train or test")
    return Corpus("pydoc", split, part, f"pydoc_data.topics (Python {platform.python_version()})")


def load_tinystories(split: str, tinystories_dir: str | None = None) -> Corpus:
    """Load the TinyStories text, split at a blank line: the first 80 % for validation/train, the rest for test."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in ("validation", "train", "test"):
        raise ValueError(f"TinyStories split {split!r} is unknown; use validation, train or test")
    chosen = tinystories_dir or os.environ.get("SASQ_TINYSTORIES_DIR")
    if not chosen:
        raise FileNotFoundError(f"no TinyStories folder given; pass --tinystories-dir or set SASQ_TINYSTORIES_DIR to the folder holding {TINYSTORIES_FILE}")
    path = Path(chosen).expanduser() / TINYSTORIES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"TinyStories text {path} not found; pass --tinystories-dir or set SASQ_TINYSTORIES_DIR to the folder holding {TINYSTORIES_FILE}")
    text = path.read_text(encoding="utf-8")
    cut = text.find("\n\n", int(len(text) * TINYSTORIES_TRAIN_FRACTION))
    if cut < 0:
        raise ValueError(f"TinyStories text {path} has no blank line after its first 80 %; it cannot be split into train and test")
    if split == "test":
        start, end = cut + 2, len(text)
    else:
        start, end = 0, cut
    return Corpus("tinystories", split, text[start:end], f"{path} (characters {start}-{end})")


def load_corpus(name: str, split: str = "test", data_dir: str | None = None, tinystories_dir: str | None = None) -> Corpus:
    """Load a corpus by name (see the module docstring); ``data_dir`` is the WikiText-2 folder."""
    if name == "wikitext2":
        corpus = load_wikitext2(split, data_dir)
    elif name == "tinystories":
        corpus = load_tinystories(split, tinystories_dir)
    elif name == "pydoc":
        corpus = load_pydoc_topics(split)
    elif name.startswith("text:"):
        path = Path(name[len("text:"):]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"text corpus {path} not found; check the path after text:")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"text corpus {path} is not UTF-8 text ({err.reason} at byte {err.start}); convert it to UTF-8") from None
        corpus = Corpus(name, split, text, str(path))
    else:
        raise ValueError(f"corpus {name!r} is unknown; use wikitext2, tinystories, pydoc or text:PATH")
    if not corpus.text.strip():
        raise ValueError(f"corpus {name} ({corpus.source}) is empty; point it at a file with text")
    return corpus


def tokenize(tokenizer, text: str) -> Tensor:
    """Token ids of the whole text, tokenized once (the tokenizer's own BOS handling applies)."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    return ids.to(torch.long)


def _check_length(ids: Tensor, seqlen: int, what: str) -> int:
    if seqlen < 2:
        raise ValueError(f"seqlen={seqlen} is too short; use at least 2 tokens per window")
    count = ids.numel() // seqlen
    if count == 0:
        raise ValueError(
            f"the {what} corpus has {ids.numel()} tokens, fewer than one window of {seqlen}; "
            f"use a longer corpus or a shorter seqlen"
        )
    return count


def eval_windows(ids: Tensor, seqlen: int, max_windows: int | None = None) -> Tensor:
    """Non-overlapping windows ``[n, seqlen]`` from the start, tail dropped (GPTQ protocol)."""
    count = _check_length(ids, seqlen, "evaluation")
    if max_windows is not None:
        count = min(count, max_windows)
    return ids[: count * seqlen].reshape(count, seqlen)


def random_windows(ids: Tensor, seqlen: int, count: int, seed: int) -> Tensor:
    """``count`` windows starting at seeded random offsets (GPTQ-style calibration samples)."""
    _check_length(ids, seqlen, "calibration")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (count,), generator=generator)
    return torch.stack([ids[start : start + seqlen] for start in starts.tolist()])


def shuffled_windows(ids: Tensor, seqlen: int, count: int | None, seed: int) -> Tensor:
    """Non-overlapping windows in a seeded random order, the first ``count`` of them (training)."""
    total = _check_length(ids, seqlen, "training")
    windows = ids[: total * seqlen].reshape(total, seqlen)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    if count is not None:
        if count > total:
            raise ValueError(f"{count} training windows requested but the corpus has {total} of {seqlen} tokens; ask for at most {total}")
        order = order[:count]
    return windows[order]
