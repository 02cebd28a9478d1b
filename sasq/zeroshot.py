"""Zero-shot accuracy through lm-eval (EleutherAI's lm-evaluation-harness, 0.4.13) on a patched model.

A model patched by any method (fake-quantized linears, static scales, float gains) is still a
transformers ``PreTrainedModel``, so lm-eval's ``HFLM`` wraps it unchanged (``pretrained=model``).
lm-eval then scores each multiple-choice task as it would score the float model: the
log-likelihood of every choice given the context, and ``acc`` from the argmax. Install the optional dependency with
``pip install -e '.[zeroshot]'``.

Tasks come from two places:

* lm-eval task names (``arc_easy``, ``piqa``, ``hellaswag`` ...); a group name scores its
  member tasks, each reported on its own (no group average). Their data sets come from the
  Hugging Face hub. With ``offline=True`` (the default) only data sets already in the local
  ``datasets`` cache load. A task whose data set cannot be loaded is skipped, and the reason is
  stored under ``skipped`` in the result.
* local multiple-choice files in JSON lines, one document per line:
  ``{"question": "...", "choices": ["...", "..."], "answer": 0}`` with ``answer`` the index of
  the correct choice. Each becomes the lm-eval task ``local_<file stem>``: context = question,
  continuation = ``" " + choice``, metrics ``acc`` and ``acc_norm``.

Example:
    >>> result = run_zeroshot(lm.model, lm.tokenizer, ZeroShotConfig(tasks=("piqa",), local_files=("qa.jsonl",)))  # doctest: +SKIP
    >>> result["skipped"]                                                                                          # doctest: +SKIP
    {'piqa': "ConnectionError: Couldn't reach 'baber/piqa' on the Hub (offline mode is enabled)"}
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

log = logging.getLogger(__name__)

LM_EVAL_REQUIREMENT = "lm-eval==0.4.13"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
METRICS = ("acc", "acc_norm")


@dataclass(frozen=True)
class ZeroShotConfig:
    """Tasks and settings of one zero-shot run.

    Args:
        tasks: lm-eval task or group names.
        local_files: JSON-lines multiple-choice files (see the module docstring).
        limit: score only the first N documents of each task, or ``None`` for all.
        batch_size: requests per forward pass (memory only).
        offline: forbid hub downloads while tasks load and run (the previous settings are
            restored afterwards), so tasks whose data sets are not cached are skipped at once
            instead of being fetched.
        log_samples: keep each document's per-choice log-likelihoods in the result.
    """

    tasks: tuple[str, ...] = ()
    local_files: tuple[str, ...] = ()
    limit: int | None = None
    batch_size: int = 1
    offline: bool = True
    log_samples: bool = False

    def __post_init__(self) -> None:
        if not self.tasks and not self.local_files:
            raise ValueError("no zero-shot task given; name lm-eval tasks or pass a local JSON-lines file")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit} is invalid; use at least 1 or None for all documents")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} is invalid; use at least 1")


def import_lm_eval():
    """Import lm-eval, or raise an ImportError saying how to install it."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401 - checks the hf dependencies too
    except ImportError as err:
        raise ImportError(f"lm-eval is not importable ({err}); install it with pip install -e '.[zeroshot]' ({LM_EVAL_REQUIREMENT})") from err
    return lm_eval


@contextmanager
def offline_mode() -> Iterator[None]:
    """Forbid hub downloads for huggingface_hub, datasets and transformers inside the block, then restore the previous settings."""
    import datasets
    import huggingface_hub

    saved_environment = {name: os.environ.get(name) for name in OFFLINE_VARIABLES}
    # These modules read the variables once, at import, so the copies they keep are set too.
    flags = [(huggingface_hub.constants, "HF_HUB_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE")]
    saved_flags = [(holder, name, getattr(holder, name)) for holder, name in flags if hasattr(holder, name)]
    try:
        for name in OFFLINE_VARIABLES:
            os.environ[name] = "1"
        for holder, name, _ in saved_flags:
            setattr(holder, name, True)
        yield
    finally:
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for holder, name, value in saved_flags:
            setattr(holder, name, value)


def local_task_name(path: str | Path) -> str:
    """Task name of a local file: ``local_`` and the file stem with characters other than letters, digits and ``_`` replaced by ``_``."""
    return "local_" + re.sub(r"[^0-9A-Za-z_]", "_", Path(path).stem)


def read_local_documents(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a local multiple-choice file (JSON lines of question, choices, answer)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"local task file {path} not found; pass a JSON-lines file of question, choices and answer")
    documents = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number} is not valid JSON ({err.msg}); write one JSON object per line") from None
        question, choices, answer = (document.get(key) if isinstance(document, dict) else None for key in ("question", "choices", "answer"))
        if not isinstance(question, str) or not question:
            raise ValueError(f"{path} line {number} has no non-empty string 'question'; add one")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(choice, str) and choice for choice in choices):
            raise ValueError(f"{path} line {number} needs 'choices' as a list of at least two non-empty strings")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValueError(f"{path} line {number} has answer {answer!r}; use the index of the correct choice, 0 to {len(choices) - 1}")
        documents.append(document)
    if not documents:
        raise ValueError(f"local task file {path} contains no document; add one JSON object per line")
    return documents


def local_task_config(path: str | Path) -> dict[str, Any]:
    """Build the lm-eval task config of a local multiple-choice file (loaded by the ``json`` builder of ``datasets``)."""
    read_local_documents(path)
    return {
        "task": local_task_name(path),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(path).resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "question",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": " ",
        "metric_list": [{"metric": metric, "aggregation": "mean", "higher_is_better": True} for metric in METRICS],
        "metadata": {"version": 1.0, "source": str(path)},
    }


def _failure(err: BaseException) -> str:
    message = str(err).strip().splitlines()
    return f"{type(err).__name__}: {message[0] if message else 'no message'}"


def load_tasks(config: ZeroShotConfig) -> tuple[dict[str, Any], dict[str, str], Any]:
    """Load every task that can be loaded; return ``(tasks by name, skip reasons by name, task manager)``."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=bool(config.tasks))
    specs: list[tuple[str, str | dict]] = [(name, name) for name in config.tasks]
    specs += [(local_task_name(path), local_task_config(path)) for path in config.local_files]
    loaded: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, spec in specs:
        try:
            tasks = manager.load([spec])["tasks"]
        except Exception as err:  # noqa: BLE001 - lm-eval and datasets raise many types for a task that cannot load
            skipped[name] = _failure(err)
            log.warning("zero-shot task %s skipped: %s", name, skipped[name])
            continue
        loaded.update(tasks)
    return loaded, skipped, manager


def run_zeroshot(model: nn.Module, tokenizer, config: ZeroShotConfig) -> dict[str, Any]:
    """Score ``model`` on the configured tasks through lm-eval.

    Returns:
        ``{"lm_eval": version, "tasks": {name: {"acc": ..., "acc_stderr": ..., "acc_norm": ...,
        "documents": n}}, "skipped": {name: reason}}``, plus ``"samples": {name: [{"doc_id",
        "target", "loglikelihoods", "prediction"}]}`` when ``config.log_samples`` is set.
    """
    lm_eval = import_lm_eval()
    with offline_mode() if config.offline else nullcontext():
        tasks, skipped, manager = load_tasks(config)
        output = _evaluate(lm_eval, model, tokenizer, tasks, manager, config) if tasks else None
    result: dict[str, Any] = {"lm_eval": lm_eval.__version__, "tasks": {}, "skipped": skipped}
    if output is None:
        log.warning("no zero-shot task could be loaded; nothing was scored")
        return result
    for name in tasks:
        metrics = output["results"].get(name, {})
        entry: dict[str, Any] = {}
        for metric in METRICS:
            if f"{metric},none" in metrics:
                entry[metric] = metrics[f"{metric},none"]
                entry[f"{metric}_stderr"] = metrics.get(f"{metric}_stderr,none")
        entry["documents"] = int(output["n-samples"][name]["effective"])
        result["tasks"][name] = entry
    if config.log_samples:
        result["samples"] = {name: [_sample_record(sample) for sample in output["samples"][name]] for name in tasks}
    return result


def _evaluate(lm_eval, model: nn.Module, tokenizer, tasks: dict[str, Any], manager, config: ZeroShotConfig) -> dict[str, Any]:
    from lm_eval.models.huggingface import HFLM

    # HFLM sets a pad token on the tokenizer it gets, so it gets a copy.
    wrapped = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=config.batch_size)
    return lm_eval.simple_evaluate(
        model=wrapped,
        tasks=list(tasks.values()),
        num_fewshot=0,
        limit=config.limit,
        log_samples=config.log_samples,
        task_manager=manager,
    )


def _sample_record(sample: dict[str, Any]) -> dict[str, Any]:
    loglikelihoods = [float(response[0]) for response in sample["filtered_resps"]]
    return {
        "doc_id": int(sample["doc_id"]),
        "target": sample["target"],
        "loglikelihoods": loglikelihoods,
        "prediction": max(range(len(loglikelihoods)), key=loglikelihoods.__getitem__),
    }
