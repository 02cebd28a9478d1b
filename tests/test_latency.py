"""The latency benchmark in its quick mode: it runs end to end and writes the expected CSV and figure."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

from sasq import latency
from sasq.int8 import set_compile

ASSETS = Path(os.environ.get("SASQ_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
STORIES = ASSETS / "stories260K-hf"
EXPECTED_COLUMNS = [
    "model_or_shape",
    "variant",
    "phase",
    "tokens",
    "context",
    "median_ms",
    "ratio_fp32",
    "ratio_int8_dynamic",
    "gop_s",
    "int_gemm_gop_s",
    "repeats",
    "device",
    "compiled",
]


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)
    yield
    set_compile(True)


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason=f"stories260K missing under {ASSETS}")
def test_quick_run_writes_csv_and_figure(tmp_path):
    output, figure = tmp_path / "latency.csv", tmp_path / "latency.png"
    argv = ["--quick", "--no-compile", "--threads", "1", "--model", str(STORIES), "--output", str(output), "--figure", str(figure)]
    assert latency.main(argv) == 0

    columns, rows = _read(output)
    assert columns == EXPECTED_COLUMNS
    assert figure.stat().st_size > 0

    cases = {(r["model_or_shape"], r["variant"], r["phase"]) for r in rows}
    for variant in latency.VARIANTS:
        assert ("tiny 64x128", variant, "layer") in cases
        assert ("stories260K-hf", variant, "prefill") in cases
        assert ("stories260K-hf", variant, "decode") in cases
    assert ("tiny 64x128", "int-gemm", "layer") in cases
    assert ("tiny 64x128", "int8-dynamic", "quantize") in cases

    for row in rows:
        assert float(row["median_ms"]) > 0, row
        assert row["repeats"] == "2"
        if row["variant"] == "fp32":
            assert float(row["ratio_fp32"]) == 1.0
        if row["phase"] == "layer":
            assert float(row["gop_s"]) > 0
        if row["phase"] == "layer" and row["variant"].startswith("int8"):
            assert float(row["int_gemm_gop_s"]) > 0
        if row["variant"] == "int8-static" and row["phase"] != "quantize":
            assert float(row["ratio_int8_dynamic"]) > 0
        if row["phase"] == "decode":
            assert row["tokens"] == "1"
            assert row["context"] == "32"


def test_parts_select_layers_only(tmp_path):
    output = tmp_path / "layers.csv"
    argv = ["--quick", "--no-compile", "--parts", "layer", "--shapes", "24x40", "--output", str(output), "--figure", str(tmp_path / "f.png")]
    assert latency.main(argv) == 0
    _, rows = _read(output)
    assert {r["phase"] for r in rows} == {"layer"}
    assert {r["model_or_shape"] for r in rows} == {"custom 24x40"}
    assert {r["variant"] for r in rows} == {*latency.VARIANTS, "int-gemm"}


def test_invalid_options_rejected():
    with pytest.raises(ValueError, match="unknown parts"):
        latency.main(["--quick", "--parts", "layer,training"])
    with pytest.raises(ValueError, match="is invalid"):
        latency.parse_shapes("4096by11008")


def test_cuda_request_without_gpu_rejected(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        latency.main(["--quick", "--device", "cuda", "--output", str(tmp_path / "x.csv")])
