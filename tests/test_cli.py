"""The command line on the real stories260K model and WikiText-2 files, and its bad-input errors."""

import json

import pytest
import torch

from sasq.cli import main

from conftest import tiny_llama

FAST = ["--calib-windows", "2", "--calib-seqlen", "128"]
EVAL = ["--seqlen", "256", "--eval-windows", "2"]


@pytest.fixture(autouse=True)
def _wikitext(monkeypatch, wikitext_dir):
    monkeypatch.setenv("SASQ_WIKITEXT_DIR", str(wikitext_dir))


def run_error(capsys, argv):
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sasq ")]
    assert code == 2
    assert len(err) == 1
    return err[0]


def test_train_then_evaluate_end_to_end(tmp_path, stories_path):
    model = ["--model", str(stories_path)]
    scales = tmp_path / "sasq.safetensors"
    assert main(["train", *model, *FAST, "--train-windows", "4", "--train-seqlen", "128", "--output", str(scales)]) == 0
    trained = json.loads(scales.with_suffix(".json").read_text())
    assert len(trained["loss_curve"]) == 4
    assert trained["train_windows"] == 4
    out = tmp_path / "eval.json"
    assert main(["evaluate", *model, "--method", "sasq", "--scales", str(scales), *EVAL, "--output", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["method"] == "sasq"
    assert row["train_windows"] == 4
    assert row["eval_windows"] == 2
    assert row["eval_source"].endswith("wiki.test.raw")
    assert 1.0 < row["ppl"] < 1000.0


@pytest.mark.parametrize("method", ["fp", "dynamic", "static-minmax", "sasq-init", "static-percentile"])
def test_evaluate_every_untrained_method(tmp_path, stories_path, method):
    out = tmp_path / f"{method}.json"
    assert main(["evaluate", "--model", str(stories_path), "--method", method, *FAST, *EVAL, "--output", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["ppl"] > 1.0
    assert row["granularity"] == {"fp": "none", "dynamic": "per-token"}.get(method, "per-tensor")


def test_unknown_method(tmp_path, stories_path, capsys):
    line = run_error(capsys, ["evaluate", "--model", str(stories_path), "--method", "awq", *EVAL, "--output", str(tmp_path / "x.json")])
    assert "method 'awq' is unknown; use one of" in line


@pytest.mark.parametrize("bits", ["0", "9"])
def test_bits_out_of_range(tmp_path, stories_path, capsys, bits):
    line = run_error(capsys, ["evaluate", "--model", str(stories_path), "--method", "dynamic", "--wbits", bits, *EVAL, "--output", str(tmp_path / "x.json")])
    assert f"bits={bits} is out of range" in line


def test_seqlen_above_context(tmp_path, stories_path, capsys):
    line = run_error(capsys, ["evaluate", "--model", str(stories_path), "--method", "fp", "--seqlen", "2048", "--output", str(tmp_path / "x.json")])
    assert "--seqlen=2048 exceeds the model's context of 512 tokens" in line


def test_scales_from_another_model(tmp_path, stories_path, capsys):
    scales = tmp_path / "stories.safetensors"
    assert main(["calibrate", "--model", str(stories_path), *FAST, "--output", str(scales)]) == 0
    other = tmp_path / "other"
    tiny_llama().save_pretrained(other)
    # The tokenizer comes from stories260K: only the weights differ.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (other / name).write_bytes((stories_path / name).read_bytes())
    line = run_error(capsys, ["evaluate", "--model", str(other), "--method", "sasq-init", "--scales", str(scales), "--seqlen", "64", "--eval-windows", "1", "--output", str(tmp_path / "x.json")])
    assert "was made for another model" in line


def test_empty_corpus(tmp_path, stories_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    line = run_error(capsys, ["evaluate", "--model", str(stories_path), "--method", "fp", "--eval-corpus", f"text:{empty}", *EVAL, "--output", str(tmp_path / "x.json")])
    assert "is empty" in line
    assert not (tmp_path / "x.json").exists()


def test_trained_method_without_scales(tmp_path, stories_path, capsys):
    line = run_error(capsys, ["evaluate", "--model", str(stories_path), "--method", "sasq", *EVAL, "--output", str(tmp_path / "x.json")])
    assert "run `sasq train` first" in line


def test_missing_model_folder(tmp_path, capsys):
    line = run_error(capsys, ["evaluate", "--model", str(tmp_path / "nope"), "--method", "fp", *EVAL, "--output", str(tmp_path / "x.json")])
    assert "not found" in line


def test_transform_scales_need_same_calibration(tmp_path, stories_path, capsys):
    scales = tmp_path / "smooth.safetensors"
    model = ["--model", str(stories_path)]
    assert main(["calibrate", *model, "--method", "smoothquant-static", *FAST, "--output", str(scales)]) == 0
    other = ["--calib-windows", "3", "--calib-seqlen", "128"]
    line = run_error(capsys, ["evaluate", *model, "--method", "smoothquant-static", "--scales", str(scales), *other, *EVAL, "--output", str(tmp_path / "x.json")])
    assert "made with calib_windows=2 but this run uses 3" in line


def test_scales_from_other_method_or_bits(tmp_path, stories_path, capsys):
    scales = tmp_path / "minmax.safetensors"
    model = ["--model", str(stories_path)]
    assert main(["calibrate", *model, "--method", "static-minmax", *FAST, "--output", str(scales)]) == 0
    out = ["--output", str(tmp_path / "x.json")]
    line = run_error(capsys, ["evaluate", *model, "--method", "sasq-init", "--scales", str(scales), *EVAL, *out])
    assert "made with method='static-minmax' but this run uses 'sasq-init'" in line
    line = run_error(capsys, ["evaluate", *model, "--method", "static-minmax", "--wbits", "4", "--scales", str(scales), *EVAL, *out])
    assert "made with wbits=8 but this run uses 4" in line
    line = run_error(capsys, ["evaluate", *model, "--method", "dynamic", "--scales", str(scales), *EVAL, *out])
    assert "has no static scales; drop --scales" in line


def test_untrained_scales_for_trained_method(tmp_path, stories_path, capsys):
    scales = tmp_path / "init.safetensors"
    model = ["--model", str(stories_path)]
    assert main(["calibrate", *model, "--method", "sasq", *FAST, "--output", str(scales)]) == 0
    line = run_error(capsys, ["evaluate", *model, "--method", "sasq", "--scales", str(scales), *EVAL, "--output", str(tmp_path / "x.json")])
    assert "holds untrained scales" in line


def test_corrupt_scales_file(tmp_path, stories_path, capsys):
    scales = tmp_path / "bad.safetensors"
    scales.write_bytes(b"\xff" * 64)
    line = run_error(capsys, ["evaluate", "--model", str(stories_path), "--method", "sasq-init", "--scales", str(scales), *EVAL, "--output", str(tmp_path / "x.json")])
    assert "is not a valid scales file" in line


@pytest.mark.parametrize(
    "option, value",
    [("--eval-windows", "0"), ("--eval-windows", "-1"), ("--calib-windows", "-3"), ("--eval-batch-size", "0"), ("--threads", "0")],
)
def test_counts_out_of_range(tmp_path, stories_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", str(stories_path), "--method", "fp", option, value, "--output", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    assert f"argument {option}: {value} is invalid" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, shown", [("--train-windows", "-4", "-4"), ("--grad-clip", "-1", "-1.0"), ("--max-steps", "0", "0")])
def test_train_options_out_of_range(tmp_path, stories_path, capsys, option, value, shown):
    with pytest.raises(SystemExit):
        main(["train", "--model", str(stories_path), option, value, "--output", str(tmp_path / "s.safetensors")])
    assert f"argument {option}: {shown} is invalid" in capsys.readouterr().err


def test_cuda_without_gpu(tmp_path, stories_path, capsys):
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    line = run_error(capsys, ["evaluate", "--model", str(stories_path), "--method", "fp", "--device", "cuda:0", *EVAL, "--output", str(tmp_path / "x.json")])
    assert "device 'cuda:0' is not available" in line


TRAIN = ["--train-windows", "4", "--train-seqlen", "128"]


def read_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_fp_gain_calibrate_train_evaluate(tmp_path, stories_path, capsys):
    model = ["--model", str(stories_path)]
    init = tmp_path / "gain-init.safetensors"
    assert main(["calibrate", *model, "--method", "fp-gain", "--output", str(init)]) == 0
    initial = read_tensors(init)
    assert len(initial) == 20
    assert all(bool((tensor == 1.0).all()) for tensor in initial.values())

    trained = tmp_path / "gain.safetensors"
    assert main(["train", *model, "--method", "fp-gain", "--init-scales", str(init), *TRAIN, "--output", str(trained)]) == 0
    train_row = json.loads(trained.with_suffix(".json").read_text())
    assert len(train_row["loss_curve"]) == 4
    assert train_row["calib_windows"] == 0
    assert any(abs(ratio - 1.0) > 1e-4 for ratio in train_row["scale_ratio_trained_to_init"].values())

    out = tmp_path / "gain-eval.json"
    assert main(["evaluate", *model, "--method", "fp-gain", "--scales", str(trained), *EVAL, "--output", str(out)]) == 0
    row = json.loads(out.read_text())
    assert (row["method"], row["wbits"], row["abits"], row["granularity"]) == ("fp-gain", None, None, "per-tensor")
    assert row["train_corpus"] == "wikitext2"
    assert row["train_windows"] == 4
    assert 1.0 < row["ppl"] < 1000.0

    line = run_error(capsys, ["evaluate", *model, "--method", "fp-gain", "--scales", str(init), *EVAL, "--output", str(tmp_path / "x.json")])
    assert "holds untrained scales" in line


def test_fp_gain_trains_on_same_windows_as_sasq(tmp_path, stories_path):
    model = ["--model", str(stories_path), *FAST, *TRAIN, "--seed", "3"]
    rows = {}
    for method in ("sasq", "fp-gain"):
        out = tmp_path / f"{method}.safetensors"
        assert main(["train", *model, "--method", method, "--output", str(out)]) == 0
        rows[method] = json.loads(out.with_suffix(".json").read_text())
    assert rows["sasq"]["train"] == rows["fp-gain"]["train"]
    assert rows["sasq"]["train_windows_sha256"] == rows["fp-gain"]["train_windows_sha256"]
    assert rows["sasq"]["steps"] == rows["fp-gain"]["steps"] == 4


def test_train_on_tinystories_evaluate_on_wikitext(tmp_path, stories_path, tinystories_dir):
    model = ["--model", str(stories_path), "--tinystories-dir", str(tinystories_dir)]
    scales = tmp_path / "sasq-tinystories.safetensors"
    corpus = ["--calib-corpus", "tinystories", "--train-corpus", "tinystories"]
    assert main(["train", *model, *corpus, *FAST, *TRAIN, "--output", str(scales)]) == 0
    trained = json.loads(scales.with_suffix(".json").read_text())
    assert (trained["train_corpus"], trained["calib_corpus"]) == ("tinystories", "tinystories")
    assert "tinystories_train_head.txt (characters 0-" in trained["train_source"]

    out = tmp_path / "eval.json"
    assert main(["evaluate", *model, "--method", "sasq", "--scales", str(scales), "--eval-corpus", "wikitext2", *EVAL, "--output", str(out)]) == 0
    row = json.loads(out.read_text())
    assert (row["train_corpus"], row["calib_corpus"], row["eval_corpus"]) == ("tinystories", "tinystories", "wikitext2")
    assert row["train_source"] == trained["train_source"]
    assert row["train_windows_sha256"] == trained["train_windows_sha256"]
    assert row["eval_source"].endswith("wiki.test.raw")
    assert 1.0 < row["ppl"] < 10000.0

    held_out = tmp_path / "eval-tinystories.json"
    assert main(["evaluate", *model, "--method", "fp", "--eval-corpus", "tinystories", *EVAL, "--output", str(held_out)]) == 0
    row = json.loads(held_out.read_text())
    assert row["eval_corpus"] == "tinystories"
    assert row["eval_split"] == "test"
    assert "(characters " in row["eval_source"]
    assert row["ppl"] < 20.0


def test_train_seed_sets_scales(tmp_path, stories_path):
    model = ["--model", str(stories_path), *FAST, *TRAIN]
    scales = {}
    for run, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        out = tmp_path / f"{run}.safetensors"
        assert main(["train", *model, "--seed", seed, "--output", str(out)]) == 0
        scales[run] = read_tensors(out)
    assert scales["a"].keys() == scales["b"].keys() == scales["c"].keys()
    assert all(torch.equal(scales["a"][key], scales["b"][key]) for key in scales["a"])
    assert any(not torch.equal(scales["a"][key], scales["c"][key]) for key in scales["a"])


def test_observer_option_matches_registered_method(tmp_path, stories_path):
    model = ["--model", str(stories_path), *FAST]
    with_option = tmp_path / "init-minmax.safetensors"
    registered = tmp_path / "static-minmax.safetensors"
    assert main(["calibrate", *model, "--method", "sasq-init", "--observer", "minmax", "--output", str(with_option)]) == 0
    assert main(["calibrate", *model, "--method", "static-minmax", "--output", str(registered)]) == 0
    a, b = read_tensors(with_option), read_tensors(registered)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert json.loads(with_option.with_suffix(".json").read_text())["observer"] == "minmax"


def test_observer_recorded_through_train_and_evaluate(tmp_path, stories_path, capsys):
    model = ["--model", str(stories_path)]
    scales = tmp_path / "sasq-percentile.safetensors"
    assert main(["train", *model, *FAST, *TRAIN, "--observer", "percentile", "--output", str(scales)]) == 0
    assert json.loads(scales.with_suffix(".json").read_text())["observer"] == "percentile"
    out = tmp_path / "eval.json"
    assert main(["evaluate", *model, "--method", "sasq", "--scales", str(scales), *EVAL, "--output", str(out)]) == 0
    assert json.loads(out.read_text())["observer"] == "percentile"
    capsys.readouterr()
    line = run_error(capsys, ["evaluate", *model, "--method", "sasq", "--observer", "minmax", "--scales", str(scales), *EVAL, "--output", str(out)])
    assert "made with observer='percentile' but this run uses 'minmax'" in line
    line = run_error(capsys, ["evaluate", *model, "--method", "fp", "--observer", "minmax", *EVAL, "--output", str(out)])
    assert "method fp has no static scales, so an observer does not apply" in line


@pytest.mark.parametrize("method", ["fp", "sasq-init"])
def test_generate_writes_continuations(tmp_path, stories_path, method):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\nThe cat\n")
    out = tmp_path / "gen.json"
    argv = ["generate", "--model", str(stories_path), "--method", method, *FAST, "--prompts", str(prompts), "--max-new-tokens", "8", "--output", str(out)]
    assert main(argv) == 0
    row = json.loads(out.read_text())
    assert row["method"] == method
    assert (row["wbits"], row["abits"]) == ((None, None) if method == "fp" else (8, 8))
    assert [entry["prompt"] for entry in row["generations"]] == ["Once upon a time", "The cat"]
    assert all(len(entry["new_tokens"]) == 8 for entry in row["generations"])
    assert all(entry["continuation"] for entry in row["generations"])
