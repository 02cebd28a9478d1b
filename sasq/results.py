"""Result rows: one JSON object per run, with the environment that produced it.

The field names are the suite's contract with the workflow and the report (see the README's
"Result rows" section); add fields freely, rename none without changing their readers.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
from pathlib import Path

import torch

log = logging.getLogger(__name__)


# Workflow outputs are committed too. A run that rewrites them has not changed the code.
OUTPUT_FOLDERS = ("results", "figures")


def git_commit() -> str:
    """Return the suite's git commit, or ``unknown``.

    ``-dirty`` marks uncommitted changes outside the workflow's output folders (``results/``,
    ``figures/``), so a rerun of the workflow in a clean checkout still records the bare commit.
    """
    root = Path(__file__).resolve().parent.parent
    excluded = [f":(exclude){folder}" for folder in OUTPUT_FOLDERS]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded]
        dirty = subprocess.run(status, cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def device_name(device: str) -> str:
    """Return a readable name of the device: the GPU model, or the CPU and its thread count."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: str) -> dict[str, str]:
    """Versions and machine facts for a result row."""
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "device": device_name(device),
    }


def write_json(path: str | Path, row: dict) -> None:
    """Write a result row as indented JSON, atomically, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(row, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    log.info("wrote %s", path)
