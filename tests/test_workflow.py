"""The Snakemake workflow: dry runs of the paper config, the .test config end to end, config validation.

Skipped when snakemake is not installed (`pip install -e '.[workflow]'`). The end-to-end test
runs the stories260K model on the WikiText-2 raw files from ``$SASQ_ASSETS`` (default
``../shared/assets`` beside the checkout), about 27 jobs, a few minutes on two CPU cores.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("snakemake", reason="snakemake is not installed; install the workflow extra: pip install -e '.[workflow]'")
pytest.importorskip("pandas", reason="pandas is not installed; install the workflow extra: pip install -e '.[workflow]'")
pytest.importorskip("matplotlib", reason="matplotlib is not installed; install the workflow extra: pip install -e '.[workflow]'")

REPO = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("SASQ_ASSETS", REPO.parent / "shared" / "assets")).resolve()
TEST_CONFIG = REPO / ".test" / "config" / "config.yaml"
FIGURES = ["ppl_vs_bits", "ppl_vs_model_size", "sasq_loss_curve", "activation_absmax"]
TEST_METHODS = ["fp", "dynamic", "static-minmax", "sasq-init", "sasq"]
TEST_BITS = ["w8a8", "w4a8"]


def snakemake(*args: str, cwd: Path = REPO, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run snakemake from this interpreter's environment, so `sasq` and the venv's packages are found."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assets_config() -> list[str]:
    stories = ASSETS / "stories260K-hf"
    wikitext = ASSETS / "wikitext-2-raw"
    if not (stories / "config.json").is_file() or not (wikitext / "wiki.test.raw").is_file():
        pytest.skip(f"stories260K or WikiText-2 raw files not found under {ASSETS} (set SASQ_ASSETS)")
    return [f"assets_dir={ASSETS}", f"data_dir={wikitext}"]


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_paper_config_dry_run(profile, tmp_path):
    result = snakemake(
        "-n", "--profile", str(REPO / "profiles" / profile), "--configfile", str(REPO / "config" / "paper.yaml"),
        "--config", f"output_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout + result.stderr
    assert "This was a dry-run" in summary
    for rule in ("prepare_model", "calibrate", "train", "evaluate", "diagnose", "collect", "report"):
        assert f"rule {rule}:" in summary, f"dry run of config/paper.yaml plans no {rule} job"
    assert "meta-llama/Llama-2-70b-hf" in summary
    assert not (tmp_path / "results").exists()


def test_default_config_dry_run(tmp_path):
    result = snakemake("-n", "--cores", "2", "--config", f"output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "smollm2-135m" in result.stdout + result.stderr


def test_default_output_dir_accepts_file_target():
    """A result file named as a target is found when output_dir is the default "."."""
    target = "results/runs/smollm2-135m/evaluate/fp-float.json"
    result = snakemake("-n", "--cores", "1", target)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MissingRuleException" not in result.stdout + result.stderr


def test_test_config_end_to_end(tmp_path):
    out = tmp_path / "out"
    result = snakemake(
        "--cores", "2", "--directory", str(tmp_path), "--configfile", str(TEST_CONFIG),
        "--config", f"output_dir={out}", *assets_config(),
    )
    assert result.returncode == 0, result.stderr[-5000:]

    with open(out / "results" / "ppl.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    found = {(row["model"], row["method"], row["bits"]) for row in rows}
    expected = {("stories260k", "fp", "float")} | {("stories260k", m, b) for m in TEST_METHODS[1:] for b in TEST_BITS}
    assert found == expected
    for row in rows:
        assert row["eval_corpus"] == "wikitext2", row
        assert row["corpus_fallback"] == "False", row
        assert row["eval_windows"] == "2", row
        assert row["seqlen"] == "256", row
        assert 1.0 < float(row["ppl"]) < 1e4, row

    report = (out / "results" / "report.md").read_text()
    table_rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    header = next(index for index, line in enumerate(table_rows) if line.startswith("| method |"))
    assert "stories260k W8A8" in table_rows[header]
    assert table_rows[header + 1].startswith("| fp |")
    assert "Corpus: `wikitext2`" in report
    assert "WARNING" not in report

    for name in FIGURES:
        figure = out / "figures" / f"{name}.png"
        assert figure.is_file(), f"{figure} missing"
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bits in TEST_BITS:
        assert (out / "results" / "runs" / "stories260k" / "train" / f"sasq-{bits}.json").is_file()
        assert (out / "results" / "runs" / "stories260k" / "diagnose" / f"sasq-init-{bits}.json").is_file()

    again = snakemake(
        "--cores", "2", "--directory", str(tmp_path), "--configfile", str(TEST_CONFIG),
        "--config", f"output_dir={out}", *assets_config(),
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr


CLAIMS_OPTIONS = """
claims: true
claims_options:
  seeds: [0, 1]
  observers: [minmax]
  train_windows: [2]
  lrs: []
  granularity_ablation: false
  generation_tokens: 4
  zeroshot_tasks: []
"""


def own_corpus_models() -> str:
    """A models block with stories260K on its own corpus, TinyStories, scored on 256-token windows."""
    if not (ASSETS / "tinystories" / "tinystories_train_head.txt").is_file():
        pytest.skip(f"TinyStories text not found under {ASSETS}/tinystories (set SASQ_ASSETS)")
    return f"models:\n  stories260k:\n    ref: {ASSETS / 'stories260K-hf'}\n    corpus: tinystories\n    eval: {{windows: 3}}\n"


def test_claims_section_end_to_end(tmp_path):
    """stories260K on its own TinyStories domain at W8A8 with a small claims section.

    Every claim row has a verdict. WikiText-2, the shared corpus, is the model's second corpus.
    """
    config = tmp_path / "claims.yaml"
    text = TEST_CONFIG.read_text().replace("  - {wbits: 4, abits: 8}\n", "").replace("models: {}\n", own_corpus_models())
    config.write_text(text + CLAIMS_OPTIONS)
    out = tmp_path / "out"
    result = snakemake("--cores", "2", "--directory", str(tmp_path), "--configfile", str(config), "--config", f"output_dir={out}", *assets_config())
    assert result.returncode == 0, result.stderr[-5000:]

    claims = (out / "results" / "claims.md").read_text()
    report = (out / "results" / "report.md").read_text()
    assert "## Claims" in report
    assert "### stories260k (main corpus `tinystories`, second corpus `wikitext2`)" in claims
    model_row = next(line for line in report.splitlines() if line.startswith("| stories260k | "))
    assert "| `tinystories` | 3 × 256 (test) |" in model_row
    verdicts = ("holds", "does not hold", "inconclusive", "partly", "not measured")
    for claim in ("C1:", "C2:", "C3:", "C4:"):
        row = next(line for line in claims.splitlines() if line.startswith(f"| {claim}"))
        assert any(verdict in row.rsplit("|", 2)[-2] for verdict in verdicts), row
    assert "not measured (the workflow ran with latency: false)" in claims
    assert "| sasq | W8A8 |" in claims
    assert "Prompt: `Once upon a time`" in claims

    runs = out / "results" / "runs" / "stories260k"
    for seed in (0, 1):
        control = json.loads((runs / "claims" / "evaluate" / f"fp-gain-float-seed{seed}-cross.json").read_text())
        assert control["seed"] == seed
        assert control["eval_corpus"] == "wikitext2"
        assert control["train_corpus"] == "tinystories"
    moved = json.loads((runs / "claims" / "evaluate" / "sasq-w8a8-trained-on-cross-base.json").read_text())
    assert moved["train_corpus"] == "wikitext2"
    assert moved["calib_corpus"] == "wikitext2"
    assert moved["eval_corpus"] == "tinystories"
    with open(out / "results" / "ppl.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            assert row["eval_corpus"] == "tinystories", row
            assert row["calib_corpus"] in ("", "tinystories"), row
    untrained = json.loads((runs / "claims" / "evaluate" / "sasq-init-w8a8-init-minmax-base.json").read_text())
    baseline = json.loads((runs / "evaluate" / "static-minmax-w8a8.json").read_text())
    assert untrained["ppl"] == pytest.approx(baseline["ppl"], rel=1e-9)


def shell_commands(result: subprocess.CompletedProcess) -> list[str]:
    """Return the shell commands that a `snakemake -n -p` run printed."""
    prefix = "Shell command: "
    lines = (result.stdout + result.stderr).splitlines()
    return [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]


def test_claims_corpora_dry_run(tmp_path):
    """Corpus words of the claims jobs: a model on the shared corpus, and one with its own corpus."""
    stories = ASSETS / "stories260K-hf"
    config = tmp_path / "claims.yaml"
    models = f"models:\n  shared:\n    ref: {stories}\n  own:\n    ref: {stories}\n    corpus: tinystories\n"
    config.write_text(TEST_CONFIG.read_text().replace("models: {}\n", models).replace("assets_dir: ../shared/assets", "assets_dir: null") + CLAIMS_OPTIONS)
    result = snakemake("-n", "-p", "--configfile", str(config), "--config", f"output_dir={tmp_path}", f"tinystories_dir={ASSETS / 'tinystories'}")
    assert result.returncode == 0, result.stderr[-3000:]
    commands = shell_commands(result)
    shared_name = f"$(cat {tmp_path}/results/data/corpus.name)"

    def command(path: str) -> str:
        return next(line for line in commands if f"--output {tmp_path}/results/runs/{path} " in line)

    assert "--eval-corpus tinystories " in command("shared/cross/fp-float.json")
    assert f"--eval-corpus {shared_name} " in command("own/cross/fp-float.json")
    assert command("own/evaluate/fp-float.json").startswith(f"corpus=$(cat {tmp_path}/results/data/corpus-own.name);")
    assert command("shared/evaluate/fp-float.json").startswith(f"corpus={shared_name};")
    assert "corpus=tinystories;" in command("shared/claims/train/sasq-w8a8-trained-on-cross.safetensors")
    assert f"corpus={shared_name};" in command("own/claims/train/sasq-w8a8-trained-on-cross.safetensors")
    assert "--eval-corpus $base " in command("own/claims/evaluate/sasq-w8a8-trained-on-cross-base.json")


@pytest.mark.parametrize(
    ("entry", "options", "message"),
    [
        ("corpus: wikitext", "", "invalid config value for 'models.tiny.corpus': 'wikitext' is not a corpus; use wikitext2"),
        ("corpus: text:no-such-file.txt", "", "invalid config value for 'models.tiny.corpus': text:no-such-file.txt:"),
        ("eval: 5", "", "models"),
        ("corpus: wikitext2", "claims: true\nclaims_options: {cross_corpus: wikitext2}\n", "leaves model tiny without a second corpus"),
        ("corpus: tinystories", "claims: true\nclaims_options: {cross_corpus: wikitxt}\n", "'wikitxt' is not a corpus; use auto"),
        ("corpus: tinystories", "tinystories_dir: ./no-such-folder\n", "invalid config value for 'tinystories_dir':"),
        ("ref: ./no-such-model", "", "invalid config value for 'models.tiny.ref':"),
    ],
)
def test_bad_model_corpus_fails_before_jobs(entry, options, message, tmp_path):
    config = tmp_path / "bad.yaml"
    ref = "" if entry.startswith("ref:") else f"    ref: {ASSETS / 'stories260K-hf'}\n"
    models = f"models:\n  tiny:\n{ref}    {entry}\n"
    config.write_text(TEST_CONFIG.read_text().replace("models: {}\n", models).replace("assets_dir: ../shared/assets", "assets_dir: null") + options)
    folder = [] if "tinystories_dir" in options else [f"tinystories_dir={ASSETS / 'tinystories'}"]
    result = snakemake("-n", "--configfile", str(config), "--config", f"output_dir={tmp_path}", *folder)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_config_without_models_key(tmp_path):
    """A config with no models key runs the model that assets_dir adds."""
    config = tmp_path / "no-models.yaml"
    text = TEST_CONFIG.read_text()
    assert "models: {}\n" in text
    config.write_text(text.replace("models: {}\n", ""))
    result = snakemake("-n", "--configfile", str(config), "--config", f"output_dir={tmp_path}", *assets_config())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stories260k" in result.stdout + result.stderr


def test_model_override_keeps_global_settings(tmp_path):
    """A model's train block replaces only the keys it names; the rest come from the global block."""
    config = tmp_path / "override.yaml"
    models = f"models:\n  tiny:\n    ref: {ASSETS / 'stories260K-hf'}\n    train: {{windows: 7}}\n"
    text = TEST_CONFIG.read_text().replace("models: {}\n", models).replace("assets_dir: ../shared/assets", "assets_dir: null")
    config.write_text(text.replace("lr: 0.005", "lr: 0.0031"))
    result = snakemake("-n", "-p", "--configfile", str(config), "--config", f"output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    train = next(line for line in shell_commands(result) if "sasq train" in line and "/tiny/train/sasq-w8a8" in line)
    assert "--train-windows 7" in train
    assert "--lr 0.0031 " in train
    assert "--checkpoint-every 2 " in train
    assert "--train-seqlen 128 " in train


@pytest.mark.parametrize(
    ("replace", "by", "key"),
    [
        ("{wbits: 4, abits: 8}", "{wbits: 9, abits: 8}", "wbits"),
        ("methods: [fp,", "methods: [fp, no-such-method,", "methods"),
        ("granularity: per-tensor", "granularity: per-row", "granularity"),
    ],
)
def test_bad_config_fails_before_jobs(replace, by, key, tmp_path):
    text = TEST_CONFIG.read_text()
    assert replace in text
    text = text.replace(replace, by)
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    result = snakemake("--cores", "1", "--directory", str(tmp_path), "--configfile", str(config), "--config", f"output_dir={out}", *assets_config())
    assert result.returncode != 0
    assert key in result.stdout + result.stderr
    assert "rule " not in result.stdout + result.stderr
    assert not out.exists()


def test_unknown_config_key_fails(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(TEST_CONFIG.read_text() + "eval_windows: 4\n")
    result = snakemake("-n", "--configfile", str(config), "--config", f"output_dir={tmp_path}")
    assert result.returncode != 0
    assert "Additional properties are not allowed ('eval_windows'" in result.stdout + result.stderr


@pytest.mark.parametrize("allow", [True, False])
def test_corpus_fallback_without_wikitext(allow, tmp_path, monkeypatch):
    monkeypatch.delenv("SASQ_WIKITEXT_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    target = out / "results" / "data" / "corpus.json"
    result = snakemake(
        str(target), "--cores", "1", "--directory", str(tmp_path), "--configfile", str(TEST_CONFIG),
        "--config", f"output_dir={out}", f"data_dir={tmp_path / 'no-wikitext'}", f"allow_fallback_corpus={allow}",
        *assets_config()[:1],
    )
    if not allow:
        assert result.returncode != 0
        assert "allow_fallback_corpus is false" in result.stdout + result.stderr
        assert not target.exists()
        return
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(target.read_text())
    assert info["corpus"] == "pydoc"
    assert info["fallback"] is True
    assert (out / "results" / "data" / "corpus.name").read_text().strip() == "pydoc"
    assert "WARNING: WikiText-2 is not reachable" in result.stdout + result.stderr
