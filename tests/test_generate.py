"""Greedy generation on stories260K: the published sample, KV cache against full recompute, determinism."""

import json

import pytest
import torch

from sasq.generate import DEFAULT_PROMPTS, greedy_continuations, read_prompts
from sasq.method import Scheme, build_quantized_model, get_method
from sasq.models import load_model

STORY_START = ", there was a little girl named Lily. She loved to play outside in the park."


@torch.no_grad()
def greedy_without_cache(model, tokenizer, prompt, steps):
    """Argmax of the last position after a full forward pass per step (no KV cache)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    new = []
    for _ in range(steps):
        token = int(model(ids, use_cache=False).logits[0, -1].argmax())
        new.append(token)
        if token == tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return new


def test_fp_reproduces_published_greedy_sample(stories):
    [result] = greedy_continuations(stories.model, stories.tokenizer, ["Once upon a time"], 40)
    assert result.continuation.startswith(STORY_START)
    assert result.prompt_tokens[0] == stories.tokenizer.bos_token_id
    assert len(result.new_tokens) == 40
    assert not result.stopped_at_eos


@pytest.mark.parametrize("method", ["fp", "dynamic", "sasq-init", "fp-gain"])
def test_kv_cache_matches_full_recompute(stories_path, method):
    # float64, because in float32 the different matmul shapes of cached decoding can move a
    # value across a rounding boundary of the fake quantizer and flip a near-tied argmax.
    lm = load_model(str(stories_path), dtype="float64")
    calib = torch.randint(3, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    build_quantized_model(lm.model, get_method(method), Scheme(wbits=8, abits=8), calib)
    prompts = ["Once upon a time", "The Roman Empire was", "def fibonacci(n):"]
    results = greedy_continuations(lm.model, lm.tokenizer, prompts, 30)
    for prompt, result in zip(prompts, results, strict=True):
        assert result.new_tokens == greedy_without_cache(lm.model, lm.tokenizer, prompt, 30)
        assert result.continuation == lm.tokenizer.decode(result.new_tokens, skip_special_tokens=True)


def test_generation_is_deterministic(stories):
    first = greedy_continuations(stories.model, stories.tokenizer, DEFAULT_PROMPTS, 12)
    second = greedy_continuations(stories.model, stories.tokenizer, DEFAULT_PROMPTS, 12)
    assert first == second
    assert [result.prompt for result in first] == list(DEFAULT_PROMPTS)


def test_read_prompts_text_and_json(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("first prompt\n\n  \nsecond one\n")
    assert read_prompts(text) == ["first prompt", "second one"]
    listed = tmp_path / "prompts.json"
    listed.write_text(json.dumps(["a", "line\nbreak"]))
    assert read_prompts(listed) == ["a", "line\nbreak"]


@pytest.mark.parametrize("content, message", [("\n \n", "contains no prompt"), ('{"a": 1}', "not a JSON list of strings")])
def test_read_prompts_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / ("bad.json" if content.startswith("{") else "bad.txt")
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_prompts(path)


def test_zero_new_tokens_rejected(stories):
    with pytest.raises(ValueError, match="max_new_tokens=0 is invalid"):
        greedy_continuations(stories.model, stories.tokenizer, ["x"], 0)
