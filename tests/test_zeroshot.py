"""Zero-shot scoring through lm-eval on stories260K: a local task against a hand computation, skipped tasks recorded."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from sasq.zeroshot import ZeroShotConfig, local_task_name, read_local_documents

DOCUMENTS = [
    {"question": "Once upon a time, there was a little", "choices": ["girl", "table", "seven"], "answer": 0},
    {"question": "Lily went to the park to play with her", "choices": ["friends", "carburetor"], "answer": 0},
    {"question": "Tom saw a big dog. The dog was very", "choices": ["happy", "purple", "algebra"], "answer": 1},
    {"question": "She said, \"Thank you, Mom!\" and gave her a big", "choices": ["hug", "spreadsheet"], "answer": 1},
    {"question": "The cat climbed up the", "choices": ["tree", "seventeen", "because"], "answer": 2},
    {"question": "They played all day and had a lot of", "choices": ["fun", "taxes"], "answer": 0},
]


@pytest.fixture
def local_task(tmp_path):
    path = tmp_path / "tiny-stories-mc.jsonl"
    path.write_text("".join(json.dumps(document) + "\n" for document in DOCUMENTS))
    return path


@torch.no_grad()
def choice_loglikelihood(model, tokenizer, question, choice):
    """Summed log-probability of the tokens that " " + choice adds after the question (BOS included by the tokenizer)."""
    whole = tokenizer(question + " " + choice).input_ids
    context_length = len(tokenizer(question).input_ids)
    logits = model(torch.tensor([whole[:-1]])).logits[0].float()
    logprobs = F.log_softmax(logits, dim=-1)
    return sum(float(logprobs[position - 1, whole[position]]) for position in range(context_length, len(whole)))


def hand_scores(model, tokenizer):
    scores = [[choice_loglikelihood(model, tokenizer, d["question"], c) for c in d["choices"]] for d in DOCUMENTS]
    correct = [max(range(len(s)), key=s.__getitem__) == d["answer"] for s, d in zip(scores, DOCUMENTS, strict=True)]
    return scores, sum(correct) / len(correct)


def test_local_task_name_and_reading(local_task):
    assert local_task_name(local_task) == "local_tiny_stories_mc"
    assert read_local_documents(local_task) == DOCUMENTS


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "line 1 is not valid JSON"),
        ('{"question": "q", "choices": ["a"], "answer": 0}', "at least two non-empty strings"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "has answer 2; use the index of the correct choice, 0 to 1"),
        ('{"choices": ["a", "b"], "answer": 0}', "no non-empty string 'question'"),
    ],
)
def test_local_task_rejects_bad_lines(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        read_local_documents(path)


def test_config_needs_a_task():
    with pytest.raises(ValueError, match="no zero-shot task given"):
        ZeroShotConfig()


@pytest.mark.parametrize("method", ["fp", "sasq-init"])
def test_local_task_matches_hand_loglikelihoods(stories, local_task, method):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed; pip install -e '.[zeroshot]'")
    from sasq.method import Scheme, build_quantized_model, get_method
    from sasq.zeroshot import run_zeroshot

    calib = torch.randint(3, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    build_quantized_model(stories.model, get_method(method), Scheme(wbits=8, abits=8), calib)
    scores, accuracy = hand_scores(stories.model, stories.tokenizer)
    assert 0.0 < accuracy < 1.0

    result = run_zeroshot(stories.model, stories.tokenizer, ZeroShotConfig(local_files=(str(local_task),), log_samples=True))
    name = "local_tiny_stories_mc"
    assert result["skipped"] == {}
    metrics = result["tasks"][name]
    assert metrics["documents"] == len(DOCUMENTS)
    assert 0.0 <= metrics["acc"] <= 1.0
    assert metrics["acc"] == pytest.approx(accuracy, abs=1e-12)
    samples = sorted(result["samples"][name], key=lambda sample: sample["doc_id"])
    for sample, expected, document in zip(samples, scores, DOCUMENTS, strict=True):
        assert sample["target"] == document["answer"]
        assert sample["loglikelihoods"] == pytest.approx(expected, abs=1e-4)


def test_unloadable_tasks_are_recorded(stories, local_task, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed; pip install -e '.[zeroshot]'")
    import datasets
    import huggingface_hub

    from sasq.zeroshot import run_zeroshot

    # Empty caches, so arc_easy cannot load even on a machine that downloaded it before.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    config = ZeroShotConfig(tasks=("arc_easy", "no_such_task"), local_files=(str(local_task),), limit=2)
    result = run_zeroshot(stories.model, stories.tokenizer, config)
    assert set(result["skipped"]) == {"arc_easy", "no_such_task"}
    assert all(reason for reason in result["skipped"].values())
    assert "no_such_task" in result["skipped"]["no_such_task"]
    assert list(result["tasks"]) == ["local_tiny_stories_mc"]
    assert result["tasks"]["local_tiny_stories_mc"]["documents"] == 2


def test_cli_zeroshot_writes_row(tmp_path, stories_path, local_task):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed; pip install -e '.[zeroshot]'")
    from sasq.cli import main

    out = tmp_path / "zeroshot.json"
    argv = ["zeroshot", "--model", str(stories_path), "--method", "dynamic", "--local-task", str(local_task), "--output", str(out)]
    assert main(argv) == 0
    row = json.loads(out.read_text())
    assert (row["method"], row["wbits"], row["abits"]) == ("dynamic", 8, 8)
    assert row["offline"] is True
    assert row["num_fewshot"] == 0
    assert row["skipped"] == {}
    assert 0.0 <= row["tasks"]["local_tiny_stories_mc"]["acc"] <= 1.0


def test_offline_mode_restores_settings(monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed; pip install -e '.[zeroshot]'")
    import datasets
    import huggingface_hub

    from sasq.zeroshot import OFFLINE_VARIABLES, offline_mode

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with offline_mode():
        assert all(os.environ[name] == "1" for name in OFFLINE_VARIABLES)
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True
        assert datasets.config.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ
    assert os.environ["HF_DATASETS_OFFLINE"] == "0"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False
    assert datasets.config.HF_HUB_OFFLINE is False
