#!/usr/bin/env bash
# Rebuild docs/results-core.md from the JSON rows in results/core.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  cat experiments/core_doc_head.md
  echo
  python3 experiments/core_table.py results/core
  echo
  cat experiments/core_doc_tail.md
} > docs/results-core.md
