"""Provenance fields of result rows: the git commit and its ``-dirty`` mark."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sasq import results

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def make_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Create a git repository with a copy of sasq/results.py, and commit it with code and outputs."""
    root = tmp_path / "checkout"
    (root / "sasq").mkdir(parents=True)
    (root / "results").mkdir()
    shutil.copy(results.__file__, root / "sasq" / "results.py")
    (root / "results" / "ppl.csv").write_text("model,ppl\n")
    (root / "code.py").write_text("x = 1\n")
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start"]):
        subprocess.run(["git", *command], cwd=root, check=True)
    monkeypatch.setattr(results, "__file__", str(root / "sasq" / "results.py"))
    return root


def test_rewritten_outputs_keep_commit_clean(tmp_path, monkeypatch):
    root = make_checkout(tmp_path, monkeypatch)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    assert results.git_commit() == head
    (root / "results" / "ppl.csv").write_text("model,ppl\nx,1.0\n")
    assert results.git_commit() == head


def test_changed_code_marks_dirty(tmp_path, monkeypatch):
    root = make_checkout(tmp_path, monkeypatch)
    (root / "code.py").write_text("x = 2\n")
    assert results.git_commit().endswith("-dirty")
