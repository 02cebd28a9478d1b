"""Greedy continuations of fixed prompts: a readable check of what quantization does to the text.

Each prompt is tokenized on its own (with the tokenizer's BOS handling) and continued by
``model.generate`` with greedy decoding and the model's KV cache. The patched model thus runs
as at inference: prefill of the prompt, then one token per step. Decoding stops after
``max_new_tokens`` tokens or at the end-of-sequence token. Sampling, beam search and repetition
penalties are switched off explicitly, so the model's own generation config cannot change the
result. Two runs of the same model, method and scales on one machine give the same tokens.
In float32, cached decoding can still pick another token than a full recompute per step. Its
matmuls have other shapes, and a last-bit difference can move a value across a rounding
boundary of a fake quantizer and so flip a near-tied argmax.

Example:
    >>> prompts = read_prompts("prompts.txt")                                  # doctest: +SKIP
    >>> greedy_continuations(lm.model, lm.tokenizer, prompts, 16)[0].continuation   # doctest: +SKIP
    ', there was a little girl named Lily.'
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# A story opening (the domain of TinyStories models), encyclopedic openings (the domain of
# WikiText-2) and a code line: enough to see a method derail on one kind of text.
DEFAULT_PROMPTS = (
    "Once upon a time",
    "Lily and Tom went to the park. They",
    "The capital of France is",
    "The Roman Empire was",
    "In 1905, Albert Einstein published",
    "def fibonacci(n):",
)


@dataclass(frozen=True)
class Continuation:
    """One prompt's greedy continuation: the decoded new text and the token ids behind it."""

    prompt: str
    continuation: str
    prompt_tokens: list[int]
    new_tokens: list[int]
    stopped_at_eos: bool


def read_prompts(path: str | Path) -> list[str]:
    """Read prompts from a ``.json`` file (a list of strings) or a text file (one prompt per non-empty line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} not found; pass a text file with one prompt per line or a JSON list of strings")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        prompts = json.loads(text)
        if not isinstance(prompts, list) or not all(isinstance(prompt, str) for prompt in prompts):
            raise ValueError(f"prompts file {path} is not a JSON list of strings; write it as [\"first prompt\", \"second prompt\"]")
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} contains no prompt; add at least one")
    return prompts


@torch.no_grad()
def greedy_continuations(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[Continuation]:
    """Continue each prompt greedily for at most ``max_new_tokens`` tokens with the KV cache."""
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid; use at least 1")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=eos,
        pad_token_id=pad,
        use_cache=True,
    )
    device = next(model.parameters()).device
    results = []
    for prompt in tqdm(prompts, desc="generate", unit="prompt"):
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        output = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        new = output[0, ids.shape[1] :].tolist()
        stopped = eos is not None and len(new) > 0 and new[-1] == eos
        continuation = tokenizer.decode(new, skip_special_tokens=True)
        results.append(Continuation(prompt, continuation, ids[0].tolist(), new, stopped))
        log.debug("%r -> %r", prompt, continuation)
    return results
