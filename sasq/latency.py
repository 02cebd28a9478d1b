"""Latency of FP32, BF16, int8 with static scales and int8 with dynamic per-token scales.

One run measures, on one device:

* ``layer``: single linears with random weights at LLaMA-2 shapes (7B: 4096->4096, 4096->11008,
  11008->4096; 13B: 5120, 13824; 70B: 8192, 28672) on ``--layer-tokens`` tokens, plus the raw
  ``torch._int_mm`` alone (variant ``int-gemm``) as the integer-GEMM throughput reference;
* ``quantize``: the int8 input quantization step alone, to show what dynamic scales cost. The
  static step is one pass, and the dynamic step adds a per-token abs-max reduction before it;
* ``prefill``: a whole model (default SmolLM2-135M) on ``--prefill-tokens`` tokens, batch 1,
  computing the logits of the last position only, as generation does;
* ``decode``: one token with a KV cache of ``--decode-context`` tokens.

Each case is timed as the median of ``--repeats`` calls after ``--warmup`` calls. Int8 models are
the suite's patched models (``sasq-init`` for static scales, ``dynamic`` for per-token scales)
converted by :func:`sasq.int8.convert_to_int8`; attention, norms and ``lm_head`` stay in float.
The static scales come from calibration on random token ids: their values do not change the
cost of any kernel.

CSV columns: ``model_or_shape, variant, phase, tokens, context, median_ms, ratio_fp32,
ratio_int8_dynamic, gop_s, int_gemm_gop_s, repeats, device, compiled``. ``ratio_fp32`` is
``median_ms / median_ms(fp32)`` of the same case (below 1 is faster); ``ratio_int8_dynamic`` is
``median_ms / median_ms(int8-dynamic)`` on the int8-static rows. ``gop_s`` is ``2*m*k*n`` operations
per second for layer rows, and ``int_gemm_gop_s`` the raw integer GEMM's on the same shape.

Example:
    python -m sasq.latency --threads 2 --output results/latency.csv --figure figures/latency.png
    python -m sasq.latency --quick --model ../shared/assets/stories260K-hf   # seconds, for tests
"""

from __future__ import annotations

import argparse
import csv
import inspect
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sasq.int8 import Int8Linear, MaybeCompiled, cast_float_parts, convert_to_int8, int_mm, set_compile
from sasq.method import Scheme, build_quantized_model, get_method
from sasq.models import load_model, resolve_dtype
from sasq.qlinear import QLinear
from sasq.quantizer import ActivationQuantizer
from sasq.results import device_name
from sasq.spec import Granularity, QuantSpec

log = logging.getLogger(__name__)

LAYER_SHAPES = {
    "llama2-7b": ((4096, 4096), (4096, 11008), (11008, 4096)),
    "llama2-13b": ((5120, 5120), (5120, 13824), (13824, 5120)),
    "llama2-70b": ((8192, 8192), (8192, 28672), (28672, 8192)),
    "tiny": ((64, 128), (128, 64)),
}
PARTS = ("layer", "quantize", "prefill", "decode")
VARIANTS = ("fp32", "bf16", "int8-static", "int8-dynamic")
MODEL_METHODS = {"int8-static": "sasq-init", "int8-dynamic": "dynamic"}
DEFAULTS = {
    "shapes": "llama2-7b,llama2-13b,llama2-70b",
    "layer_tokens": 512,
    "prefill_tokens": [512, 2048],
    "decode_context": 512,
    "calib_tokens": 128,
    "repeats": 10,
    "warmup": 2,
}
QUICK_DEFAULTS = {**DEFAULTS, "shapes": "tiny", "layer_tokens": 32, "prefill_tokens": [32], "decode_context": 32, "calib_tokens": 32, "repeats": 2, "warmup": 1}


@dataclass
class Row:
    """One measured case, a row of ``latency.csv``."""

    model_or_shape: str
    variant: str
    phase: str
    tokens: int
    context: int | None
    median_ms: float
    ratio_fp32: float | None = None
    ratio_int8_dynamic: float | None = None
    gop_s: float | None = None
    int_gemm_gop_s: float | None = None
    repeats: int = 0
    device: str = ""
    compiled: bool = False


COLUMNS = [f.name for f in fields(Row)]


def median_ms(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls after ``warmup`` calls."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _int8_layer(weight: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | None) -> Int8Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight
    quantizer = ActivationQuantizer(spec, "bench", weight.shape[1])
    if scale is not None:
        quantizer.set_scale(scale)
    return Int8Linear.from_qlinear(QLinear(linear, QuantSpec(bits=8, granularity=Granularity.PER_CHANNEL), quantizer))


def _uncached(layer: Int8Linear, x: torch.Tensor) -> Callable[[], object]:
    # The shared-input cache would skip quantization on repeated calls with the same tensor.
    def call():
        layer.input_quantizer.clear_cache()
        return layer(x)

    return call


def bench_layer(name: str, in_features: int, out_features: int, tokens: int, args, device: torch.device) -> list[Row]:
    """Time one linear shape in every variant, the raw integer GEMM and the quantize step."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, in_features, generator=generator).to(device)
    weight = (torch.randn(out_features, in_features, generator=generator) * in_features**-0.5).to(device)
    static = _int8_layer(weight, QuantSpec(bits=8), x.abs().max() / 127)
    dynamic = _int8_layer(weight, QuantSpec(bits=8, granularity=Granularity.PER_TOKEN, dynamic=True), None)
    x_bf16, weight_bf16 = x.bfloat16(), weight.bfloat16()
    q, _ = static.input_quantizer.quantize(x)
    gemm_operand = static.gemm_weight()

    cases = {
        "fp32": lambda: F.linear(x, weight),
        "bf16": lambda: F.linear(x_bf16, weight_bf16),
        "int8-static": _uncached(static, x),
        "int8-dynamic": _uncached(dynamic, x),
        "int-gemm": lambda: int_mm(q, gemm_operand),
    }
    shape = f"{name} {in_features}x{out_features}"
    ops = 2.0 * tokens * in_features * out_features
    rows = []
    with torch.no_grad():
        if "layer" in args.parts:
            for variant, fn in cases.items():
                ms = median_ms(fn, args.repeats, args.warmup, device)
                rows.append(Row(shape, variant, "layer", tokens, None, ms, gop_s=ops / ms / 1e6))
        if "quantize" in args.parts:
            for variant, layer in (("int8-static", static), ("int8-dynamic", dynamic)):
                quantizer = layer.input_quantizer

                def quantize_only(quantizer=quantizer):
                    quantizer.clear_cache()
                    return quantizer.quantize(x)

                rows.append(Row(shape, variant, "quantize", tokens, None, median_ms(quantize_only, args.repeats, args.warmup, device)))
    gemm_rate = next((r.gop_s for r in rows if r.variant == "int-gemm"), None)
    for row in rows:
        if row.phase == "layer" and row.variant.startswith("int8"):
            row.int_gemm_gop_s = gemm_rate
    return rows


def load_variant(ref: str, variant: str, args, device: torch.device) -> nn.Module:
    """Load the model as ``variant``: float (fp32, bf16) or patched and converted to int8."""
    if variant == "bf16":
        return load_model(ref, dtype="bfloat16", device=str(device)).model
    model = load_model(ref, dtype="float32", device=str(device)).model
    if variant == "fp32":
        return model
    method = get_method(MODEL_METHODS[variant])
    calib = None
    if method.needs_calibration:
        generator = torch.Generator().manual_seed(0)
        calib = torch.randint(0, model.config.vocab_size, (1, args.calib_tokens), generator=generator).to(device)
    build_quantized_model(model, method, Scheme(wbits=8, abits=8), calib)
    convert_to_int8(model)
    if args.int8_float_dtype != "float32":
        cast_float_parts(model, resolve_dtype(args.int8_float_dtype))
    return model


def bench_model(ref: str, variant: str, args, device: torch.device) -> list[Row]:
    """Time prefill at each ``--prefill-tokens`` and one decode step of a model variant."""
    model = load_variant(ref, variant, args, device)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    name = Path(ref).name if Path(ref).exists() else ref
    rows = []
    with torch.no_grad():
        if "prefill" in args.parts:
            for tokens in args.prefill_tokens:
                ids = torch.randint(0, vocab, (1, tokens), generator=generator).to(device)
                ms = median_ms(lambda ids=ids: model(ids, use_cache=False, logits_to_keep=1), args.repeats, args.warmup, device)
                rows.append(Row(name, variant, "prefill", tokens, None, ms))
        if "decode" in args.parts:
            context = args.decode_context
            ids = torch.randint(0, vocab, (1, context + 1), generator=generator).to(device)
            cache = model(ids[:, :context], use_cache=True, logits_to_keep=1).past_key_values
            step = ids[:, context:]
            # transformers 5.x renamed the forward argument past_key_values to cache.
            cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

            def decode_step():
                model(step, use_cache=True, logits_to_keep=1, **{cache_argument: cache})
                cache.crop(-1)  # drop the appended token, so every step runs against `context` cached tokens

            rows.append(Row(name, variant, "decode", 1, context, median_ms(decode_step, args.repeats, args.warmup, device)))
    return rows


def add_ratios(rows: list[Row]) -> None:
    """Fill ``ratio_fp32`` and ``ratio_int8_dynamic`` from the rows of the same case."""
    by_case = {(r.model_or_shape, r.phase, r.tokens, r.variant): r for r in rows}
    for row in rows:
        fp32 = by_case.get((row.model_or_shape, "layer" if row.phase == "quantize" else row.phase, row.tokens, "fp32"))
        if fp32 is not None and row.phase != "quantize":
            row.ratio_fp32 = row.median_ms / fp32.median_ms
        dynamic = by_case.get((row.model_or_shape, row.phase, row.tokens, "int8-dynamic"))
        if row.variant == "int8-static" and dynamic is not None:
            row.ratio_int8_dynamic = row.median_ms / dynamic.median_ms


def write_csv(rows: list[Row], path: Path) -> None:
    """Write the rows to ``path`` with the columns of :data:`COLUMNS`, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _format(value) for key, value in asdict(row).items()})
    log.info("wrote %s (%d rows)", path, len(rows))


def _format(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else value


def plot(rows: list[Row], path: Path, device: str) -> None:
    """Bar charts of the time ratio to FP32: layers on the left, model phases on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("layer", [r for r in rows if r.phase == "layer"]), ("model", [r for r in rows if r.phase in ("prefill", "decode")])]
    panels = [(title, chosen) for title, chosen in panels if chosen]
    if not panels:
        log.warning("no layer or model rows to plot; skipping %s", path)
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    variants = [v for v in VARIANTS if v != "fp32"]
    width = 0.8 / len(variants)
    for axis, (title, chosen) in zip(axes[0], panels, strict=True):
        cases = list(dict.fromkeys(_case_label(r) for r in chosen))
        ratios = {(_case_label(r), r.variant): r.ratio_fp32 for r in chosen}
        for index, variant in enumerate(variants):
            heights = [ratios.get((case, variant)) or 0.0 for case in cases]
            axis.bar([i + index * width for i in range(len(cases))], heights, width, label=variant)
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(cases))])
        axis.set_xticklabels(cases, rotation=30, ha="right", fontsize=7)
        axis.set_ylabel("time / FP32 time (lower is faster)")
        axis.set_title(f"{title} latency, {device}", fontsize=9)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)
    plt.close(figure)
    log.info("wrote %s", path)


def _case_label(row: Row) -> str:
    if row.phase == "layer":
        return row.model_or_shape
    if row.phase == "decode":
        return f"{row.model_or_shape} decode ctx {row.context}"
    return f"{row.model_or_shape} prefill {row.tokens}"


def print_summary(rows: list[Row]) -> None:
    """Print the rows as an aligned table."""
    print(f"{'case':44s} {'variant':13s} {'phase':8s} {'ms':>10s} {'/fp32':>7s} {'/dyn':>6s} {'GOP/s':>8s} {'int-GEMM':>9s}")
    for r in rows:
        print(
            f"{r.model_or_shape:44s} {r.variant:13s} {r.phase:8s} {r.median_ms:10.3f} {_cell(r.ratio_fp32, 7, 3)} "
            f"{_cell(r.ratio_int8_dynamic, 6, 3)} {_cell(r.gop_s, 8, 1)} {_cell(r.int_gemm_gop_s, 9, 1)}"
        )


def _cell(value: float | None, width: int, digits: int) -> str:
    return " " * width if value is None else f"{value:{width}.{digits}f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sasq.latency", description="Latency of FP32, BF16, int8-static and int8-dynamic inference.")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated parts to run, from {','.join(PARTS)} (default all)")
    parser.add_argument("--shapes", default=None, help=f"layer shape sets ({','.join(LAYER_SHAPES)}) or KxN items, comma-separated (default llama2-7b,llama2-13b,llama2-70b)")
    parser.add_argument("--layer-tokens", type=int, default=None, help="tokens (GEMM rows) of the layer cases (default 512)")
    parser.add_argument("--model", default="smollm2-135m", help="model of the prefill and decode cases (default smollm2-135m)")
    parser.add_argument("--prefill-tokens", type=int, nargs="+", default=None, help="prompt lengths of the prefill cases (default 512 2048)")
    parser.add_argument("--decode-context", type=int, default=None, help="KV-cache length of the decode case (default 512)")
    parser.add_argument("--calib-tokens", type=int, default=None, help="random tokens calibrating the int8-static model's scales (default 128)")
    parser.add_argument("--int8-float-dtype", default="float32", help="dtype of the int8 models' float parts and activations: float32 or bfloat16 (default float32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case; the median is reported (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per case before timing, covering torch.compile (default 2)")
    parser.add_argument("--no-compile", action="store_true", help="run the int8 quantize and rescale steps eagerly instead of with torch.compile")
    parser.add_argument("--quick", action="store_true", help="defaults for a pipeline check in seconds: tiny shapes, 32 tokens, 2 repeats, 1 warm-up (options given explicitly still apply)")
    parser.add_argument("--output", default=None, help="CSV to write (default results/latency.csv, results/latency-cuda.csv on CUDA)")
    parser.add_argument("--figure", default=None, help="figure to write (default figures/latency.png, figures/latency-cuda.png on CUDA)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def _resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    defaults = QUICK_DEFAULTS if args.quick else DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        raise ValueError(f"--parts has unknown parts {unknown}; use {','.join(PARTS)}")
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats {args.repeats} / --warmup {args.warmup} are invalid; use repeats >= 1 and warmup >= 0")
    suffix = "" if args.device == "cpu" else "-" + args.device.split(":")[0]
    args.output = Path(args.output or f"results/latency{suffix}.csv")
    args.figure = Path(args.figure or f"figures/latency{suffix}.png")
    return args


def parse_shapes(text: str) -> list[tuple[str, int, int]]:
    """Layer cases ``(set name, in_features, out_features)`` from ``--shapes``."""
    shapes = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if item in LAYER_SHAPES:
            shapes.extend((item, k, n) for k, n in LAYER_SHAPES[item])
            continue
        try:
            k, n = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"shape {item!r} is invalid; use a set name ({', '.join(LAYER_SHAPES)}) or KxN such as 4096x11008") from None
        shapes.append(("custom", k, n))
    return shapes


def run(args: argparse.Namespace) -> list[Row]:
    """Run the selected parts and return the rows with ratios filled in."""
    device = torch.device(args.device)
    # NOTE: --device cuda has not been run on a GPU yet; only its rejection without one is tested.
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {args.device} requested but CUDA is not available; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    set_compile(not args.no_compile)
    name = device_name(args.device)
    log.info("benchmarking on %s (torch %s)", name, torch.__version__)
    rows: list[Row] = []
    if "layer" in args.parts or "quantize" in args.parts:
        shapes = parse_shapes(args.shapes)
        for set_name, k, n in tqdm(shapes, desc="layers", unit="shape"):
            rows.extend(bench_layer(set_name, k, n, args.layer_tokens, args, device))
    if "prefill" in args.parts or "decode" in args.parts:
        for variant in tqdm(VARIANTS, desc=f"model {args.model}", unit="variant"):
            rows.extend(bench_model(args.model, variant, args, device))
    compiled = MaybeCompiled.enabled and not any(f.failed for f in _compiled_functions())
    for row in rows:
        row.device, row.repeats, row.compiled = name, args.repeats, compiled and row.variant.startswith("int8")
    add_ratios(rows)
    return rows


def _compiled_functions() -> list[MaybeCompiled]:
    from sasq import int8

    return [int8.quantize_static, int8.quantize_dynamic, int8.rescale]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _resolve_args(args)
    rows = run(args)
    write_csv(rows, args.output)
    plot(rows, args.figure, rows[0].device if rows else args.device)
    print_summary(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
