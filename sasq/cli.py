"""Command line: ``sasq calibrate``, ``train``, ``evaluate``, ``diagnose``, ``generate``, ``zeroshot``, ``methods``.

Each command loads a model, applies a method and writes one JSON file (and, for calibrate and
train, a safetensors file of scales). The numerics live in the library; this module only parses
options and calls it.

Example:
    sasq evaluate --model smollm2-135m --method dynamic --wbits 8 --abits 8 \\
        --data-dir shared/assets/wikitext-2-raw --eval-windows 8 --output results/dyn.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from sasq.data import eval_windows, load_corpus, random_windows, shuffled_windows, tokenize
from sasq.models import load_model, max_context, model_fingerprint
from sasq.method import Method, Scheme, available_methods, build_quantized_model, get_method, with_observer
from sasq.results import environment, write_json
from sasq.scales import load_scales, read_scales_metadata, save_scales
from sasq.spec import OBSERVER_NAMES

log = logging.getLogger("sasq")


def positive_int(text: str) -> int:
    """Parse an integer of at least 1 (argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid; use an integer of at least 1")
    return value


def non_negative_int(text: str) -> int:
    """Parse an integer of at least 0 (argparse type)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is invalid; use an integer of at least 0")
    return value


def non_negative_float(text: str) -> float:
    """Parse a number of at least 0 (argparse type)."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} is invalid; use a number of at least 0")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, help="source name (smollm2-135m), local HF folder, .gguf file or hub id")
    group.add_argument("--dtype", default="float32", help="weight and activation dtype: float32, bfloat16, float16 or float64 (default float32)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    group.add_argument("--data-dir", default=None, help="folder with WikiText-2 raw files (default $SASQ_WIKITEXT_DIR, else the hub)")
    group.add_argument("--tinystories-dir", default=None, help="folder with tinystories_train_head.txt for the tinystories corpus (default $SASQ_TINYSTORIES_DIR)")
    group.add_argument("--seed", type=int, default=0, help="seed of the calibration window offsets and of the choice and order of training windows (default 0)")
    group.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's choice)")


def _add_scheme_options(parser: argparse.ArgumentParser, default_method: str | None) -> None:
    group = parser.add_argument_group("quantization scheme")
    group.add_argument("--method", default=default_method, required=default_method is None, help="method name; `sasq methods` lists them")
    group.add_argument("--wbits", type=int, default=8, help="weight bits, 2-8 (default 8)")
    group.add_argument("--abits", type=int, default=8, help="activation bits, 2-8 (default 8)")
    group.add_argument("--granularity", default="per-tensor", help="static activation scales (or fp-gain gains): per-tensor or per-channel (default per-tensor)")
    group.add_argument("--asymmetric", action="store_true", help="asymmetric activation grid with a zero point (default symmetric)")
    group.add_argument("--weight-group-size", type=positive_int, default=None, help="weight columns per scale group (default: one scale per output channel)")
    group.add_argument(
        "--observer",
        default=None,
        choices=OBSERVER_NAMES,
        help="statistic that sets the initial static scales: minmax (global abs-max), mean-max (mean of per-window abs-max) "
        "or percentile (default: the method's own, or the one recorded in --scales/--init-scales)",
    )
    group.add_argument("--percentile", type=float, default=99.99, help="percentile of |x| for the percentile observer, in (0, 100] (default 99.99)")
    group.add_argument("--lsq-grad-scale", action="store_true", help="multiply scale gradients by 1/sqrt(N*qmax) as in LSQ")
    group.add_argument("--scale-param", default="log", choices=("log", "linear"), help="train log(scale) or the scale itself (default log)")
    group.add_argument("--quantize-lm-head", action="store_true", help="also quantize lm_head (default: float)")
    group.add_argument(
        "--weight-quantizer",
        default="rtn",
        choices=("rtn", "gptq"),
        help="weight quantization: rtn (round to nearest) or gptq (uses the calibration windows; lm_head stays RTN) (default rtn)",
    )


def _add_calib_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calibration data")
    group.add_argument("--calib-corpus", default="wikitext2", help="corpus: wikitext2, tinystories, pydoc or text:PATH (default wikitext2)")
    group.add_argument("--calib-split", default="validation", help="corpus split (default validation)")
    group.add_argument("--calib-windows", type=non_negative_int, default=128, help="number of calibration windows, drawn at seeded random offsets (default 128)")
    group.add_argument("--calib-seqlen", type=positive_int, default=2048, help="tokens per calibration window (default 2048)")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scale training")
    group.add_argument("--train-corpus", default="wikitext2", help="corpus the scales are trained on: wikitext2, tinystories, pydoc or text:PATH (default wikitext2)")
    group.add_argument("--train-split", default="validation", help="its split (default validation)")
    group.add_argument("--train-windows", type=positive_int, default=None, help="non-overlapping training windows, seeded order (default: all)")
    group.add_argument("--train-seqlen", type=positive_int, default=2048, help="tokens per training window (default 2048)")
    group.add_argument("--lr", type=float, default=2e-2, help="AdamW learning rate; with --scale-param log, about the relative change of a scale per step (default 2e-2)")
    group.add_argument("--epochs", type=positive_int, default=1, help="passes over the training windows (default 1)")
    group.add_argument("--batch-size", type=positive_int, default=1, help="windows per optimiser step (default 1)")
    group.add_argument("--grad-clip", type=non_negative_float, default=1.0, help="maximum gradient norm; 0 disables clipping (default 1.0)")
    group.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimiser steps (default: all epochs)")
    group.add_argument("--checkpoint-every", type=non_negative_int, default=50, help="steps between resumable checkpoints; 0 disables them (default 50)")
    group.add_argument("--init-scales", default=None, help="start from this scales file instead of calibrating")


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument("--eval-corpus", default="wikitext2", help="corpus to score: wikitext2, tinystories, pydoc or text:PATH (default wikitext2)")
    group.add_argument("--eval-split", default="test", help="its split (default test)")
    group.add_argument("--seqlen", type=positive_int, default=2048, help="tokens per evaluation window (default 2048)")
    group.add_argument("--eval-windows", type=positive_int, default=None, help="score only the first N windows (default: all)")
    group.add_argument("--eval-batch-size", type=positive_int, default=1, help="windows per forward pass; memory only (default 1)")


def _add_inference_command(commands, name: str, summary: str) -> argparse.ArgumentParser:
    """Add a subcommand that runs a quantized model with given scales: model, scheme, calibration and ``--scales`` options."""
    parser = commands.add_parser(name, help=summary)
    _add_model_options(parser)
    _add_scheme_options(parser, None)
    _add_calib_options(parser)
    parser.add_argument("--scales", default=None, help="scales file from calibrate or train (required for trained methods)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sasq", description="SASQ static activation scaling: calibrate, train, evaluate.")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    methods = commands.add_parser("methods", help="list the registered methods")
    methods.set_defaults(func=cmd_methods)

    calibrate = commands.add_parser("calibrate", help="calibrate static scales and save them")
    _add_model_options(calibrate)
    _add_scheme_options(calibrate, "sasq-init")
    _add_calib_options(calibrate)
    calibrate.add_argument("--output", required=True, help="scales file to write (.safetensors); a JSON of settings goes beside it")
    calibrate.set_defaults(func=cmd_calibrate)

    train = commands.add_parser("train", help="SASQ: calibrate, then train the static scales")
    _add_model_options(train)
    _add_scheme_options(train, "sasq")
    _add_calib_options(train)
    _add_train_options(train)
    train.add_argument("--output", required=True, help="trained scales file (.safetensors); a JSON with settings and loss curve goes beside it")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="perplexity of a method, writing one JSON result row")
    _add_model_options(evaluate)
    _add_scheme_options(evaluate, None)
    _add_calib_options(evaluate)
    _add_eval_options(evaluate)
    evaluate.add_argument("--scales", default=None, help="scales file from calibrate or train (required for trained methods)")
    evaluate.add_argument("--output", required=True, help="result JSON to write")
    evaluate.set_defaults(func=cmd_evaluate)

    diagnose = commands.add_parser("diagnose", help="per-quantizer clipping and error breakdown of a static method")
    _add_model_options(diagnose)
    _add_scheme_options(diagnose, "sasq-init")
    _add_calib_options(diagnose)
    _add_eval_options(diagnose)
    diagnose.add_argument("--scales", default=None, help="scales file to diagnose (default: calibrate)")
    diagnose.add_argument("--output", required=True, help="JSON file with one entry per quantizer")
    diagnose.set_defaults(func=cmd_diagnose)

    generate = _add_inference_command(commands, "generate", "greedy continuations of fixed prompts, writing them to JSON")
    generate.add_argument("--prompts", default=None, help="text file with one prompt per line, or a .json list of strings (default: the prompts in sasq.generate)")
    generate.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens to generate per prompt; fewer when the model emits end-of-sequence (default 32)")
    generate.add_argument("--output", required=True, help="JSON file with one entry per prompt")
    generate.set_defaults(func=cmd_generate)

    zeroshot = _add_inference_command(commands, "zeroshot", "zero-shot multiple-choice accuracy through lm-eval (needs the zeroshot extra)")
    zeroshot.add_argument("--tasks", default="", help="comma-separated lm-eval task names, e.g. arc_easy,piqa (default: none)")
    zeroshot.add_argument(
        "--local-task",
        action="append",
        default=[],
        help="JSON-lines multiple-choice file (question, choices, answer per line), scored as task local_<stem>; repeatable",
    )
    zeroshot.add_argument("--limit", type=positive_int, default=None, help="score only the first N documents of each task (default: all)")
    zeroshot.add_argument("--eval-batch-size", type=positive_int, default=1, help="requests per forward pass; memory only (default 1)")
    zeroshot.add_argument("--online", action="store_true", help="let lm-eval download data sets from the hub (default: cached or local data only)")
    zeroshot.add_argument("--log-samples", action="store_true", help="store every document's per-choice log-likelihoods in the output")
    zeroshot.add_argument("--output", required=True, help="result JSON: metrics per task and the reason for each skipped task")
    zeroshot.set_defaults(func=cmd_zeroshot)
    return parser


def _scheme(args: argparse.Namespace) -> Scheme:
    return Scheme(
        wbits=args.wbits,
        abits=args.abits,
        granularity=args.granularity,
        symmetric=not args.asymmetric,
        weight_group_size=args.weight_group_size,
        percentile=args.percentile,
        lsq_grad_scale=args.lsq_grad_scale,
        scale_parametrization=args.scale_param,
        quantize_lm_head=args.quantize_lm_head,
        weight_quantizer=args.weight_quantizer,
    )


def _check_seqlen(model, seqlen: int, option: str) -> None:
    limit = max_context(model)
    if seqlen > limit:
        raise ValueError(f"{option}={seqlen} exceeds the model's context of {limit} tokens; use {option} {limit} or less")


def _needs_calibration(method: Method, scheme: Scheme) -> bool:
    return method.needs_calibration or (method.activation != "none" and scheme.weight_quantizer == "gptq")


def _calibration_windows(args, lm, method: Method, scheme: Scheme):
    if not _needs_calibration(method, scheme) or args.calib_windows == 0:
        return None
    _check_seqlen(lm.model, args.calib_seqlen, "--calib-seqlen")
    corpus = load_corpus(args.calib_corpus, args.calib_split, args.data_dir, args.tinystories_dir)
    ids = tokenize(lm.tokenizer, corpus.text)
    return random_windows(ids, args.calib_seqlen, args.calib_windows, args.seed)


def _scheme_record(method: Method, scheme: Scheme) -> dict:
    """Bit-widths and granularity as result rows and scales files record them (none for float methods)."""
    quantized = method.activation != "none"
    if method.gains:
        granularity = scheme.granularity
    else:
        granularity = {"none": "none", "dynamic": "per-token"}.get(method.activation, scheme.granularity)
    return {"wbits": scheme.wbits if quantized else None, "abits": scheme.abits if quantized else None, "granularity": granularity}


def _check_scales_match(scales_file: str, method: Method, scheme: Scheme, initial: bool, observer: str | None) -> dict:
    """Reject a scales file made by another method, bit-width, granularity or observer, or an untrained one for a trained method.

    ``observer`` is the one given on the command line (``None`` accepts the file's). Returns the
    settings recorded in the file.
    """
    if not method.has_scales:
        raise ValueError(f"method {method.name} has no static scales; drop --scales or use a static method")
    if not Path(scales_file).is_file():
        raise FileNotFoundError(f"scales file {scales_file} not found; run `sasq calibrate` or `sasq train` to make one")
    saved = read_scales_metadata(scales_file).get("extra", {})
    expected = {"method": method.name, **_scheme_record(method, scheme)}
    if observer is not None:
        expected["observer"] = observer
    for key, value in expected.items():
        if key in saved and saved[key] != value:
            raise ValueError(
                f"scales file {scales_file} was made with {key}={saved[key]!r} but this run uses {value!r}; "
                f"pass --{key} {saved[key]} or use scales made for {value!r}"
            )
    if method.trains and not initial and "train_windows" not in saved:
        raise ValueError(f"scales file {scales_file} holds untrained scales but method {method.name} trains them; pass the output of `sasq train`")
    return saved


def _check_same_calibration(scales_file: str, args, scheme: Scheme) -> None:
    """Reject a scales file whose transform or GPTQ ran on other calibration windows than this run's.

    Smoothing factors and GPTQ weights are rebuilt from the calibration windows,
    so scales trained after them only fit the model rebuilt from the same windows.
    """
    if not Path(scales_file).is_file():
        raise FileNotFoundError(f"scales file {scales_file} not found; run `sasq calibrate` or `sasq train` to make one")
    saved = read_scales_metadata(scales_file).get("extra", {})
    current = {
        "calib_corpus": args.calib_corpus,
        "calib_split": args.calib_split,
        "calib_windows": args.calib_windows,
        "calib_seqlen": args.calib_seqlen,
        "seed": args.seed,
        "weight_quantizer": scheme.weight_quantizer,
    }
    for key, value in current.items():
        if key in saved and saved[key] != value:
            option = "--" + key.replace("_", "-")
            raise ValueError(
                f"scales file {scales_file} was made with {key}={saved[key]!r} but this run uses {value!r}; "
                f"pass {option} {saved[key]} so the transformed model matches the scales"
            )


def _prepare(args, default_scales: str | None = None):
    """Validate options, load the model, apply the method; return what the commands share."""
    scheme = _scheme(args)
    method = get_method(args.method)
    if args.observer is not None:
        method = with_observer(method, args.observer)
    if args.threads:
        torch.set_num_threads(args.threads)
    scales_file = default_scales
    if scales_file:
        saved = _check_scales_match(scales_file, method, scheme, initial=args.command == "train", observer=args.observer)
        if args.observer is None and method.activation == "static" and saved.get("observer") not in (None, method.observer):
            method = with_observer(method, saved["observer"])
    uses_windows_with_scales = method.transform is not None or scheme.weight_quantizer == "gptq"
    if scales_file and uses_windows_with_scales:
        _check_same_calibration(scales_file, args, scheme)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    calib = None if scales_file and not uses_windows_with_scales else _calibration_windows(args, lm, method, scheme)
    quantizers = build_quantized_model(lm.model, method, scheme, calib, calibrate_scales=scales_file is None)
    if scales_file:
        load_scales(scales_file, quantizers, model_fingerprint(lm.model))
    return lm, method, scheme, quantizers, calib


def _settings(args, lm, method: Method, scheme: Scheme) -> dict:
    return {
        "model": lm.name,
        "model_ref": lm.ref,
        "method": method.name,
        **_scheme_record(method, scheme),
        "symmetric": scheme.symmetric,
        "weight_quantizer": scheme.weight_quantizer if method.activation != "none" else None,
        "weight_group_size": scheme.weight_group_size,
        "observer": method.observer,
        "scale_parametrization": scheme.scale_parametrization,
        "lsq_grad_scale": scheme.lsq_grad_scale,
        "quantize_lm_head": scheme.quantize_lm_head,
        "calib_corpus": args.calib_corpus if _needs_calibration(method, scheme) else None,
        "calib_split": args.calib_split if _needs_calibration(method, scheme) else None,
        "calib_windows": args.calib_windows if _needs_calibration(method, scheme) else 0,
        "calib_seqlen": args.calib_seqlen if _needs_calibration(method, scheme) else None,
        "seed": args.seed,
        "dtype": args.dtype,
    }


def cmd_methods(args) -> None:
    for name, method in sorted(available_methods().items()):
        print(f"{name:22s} {method.summary}")


def cmd_calibrate(args) -> None:
    began = time.perf_counter()
    lm, method, scheme, quantizers, _ = _prepare(args)
    if not any(q.is_static for q in quantizers.values()):
        raise ValueError(f"method {method.name} has no static scales to calibrate; use a static method such as sasq-init")
    if method.gains:
        log.info("method %s starts every gain at 1; the file contains those initial gains for `sasq train --init-scales`", method.name)
    settings = _settings(args, lm, method, scheme)
    save_scales(args.output, quantizers, model_fingerprint(lm.model), extra=settings)
    row = {**settings, "scales": str(args.output), "seconds": time.perf_counter() - began, **environment(args.device)}
    write_json(Path(args.output).with_suffix(".json"), row)


def cmd_train(args) -> None:
    from sasq.train import TrainConfig, train_scales, windows_digest

    began = time.perf_counter()
    method = get_method(args.method)
    if not method.trains:
        raise ValueError(f"method {method.name} does not train its scales; use sasq or another trained method")
    lm, method, scheme, quantizers, _ = _prepare(args, default_scales=args.init_scales)
    _check_seqlen(lm.model, args.train_seqlen, "--train-seqlen")
    corpus = load_corpus(args.train_corpus, args.train_split, args.data_dir, args.tinystories_dir)
    windows = shuffled_windows(tokenize(lm.tokenizer, corpus.text), args.train_seqlen, args.train_windows, args.seed)
    config = TrainConfig(
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_clip=args.grad_clip or None,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        max_steps=args.max_steps,
    )
    initial = {name: q.scale().detach().clone() for name, q in quantizers.items() if q.is_static}
    output = Path(args.output)
    result = train_scales(lm.model, quantizers, windows, config, checkpoint_path=output.with_suffix(".ckpt"))
    settings = _settings(args, lm, method, scheme)
    settings.update(
        train_corpus=args.train_corpus,
        train_split=args.train_split,
        train_source=corpus.source,
        train_windows=int(windows.shape[0]),
        train_windows_sha256=windows_digest(windows),
        train_seqlen=args.train_seqlen,
        init_scales=args.init_scales,
    )
    save_scales(output, quantizers, model_fingerprint(lm.model), extra=settings)
    ratios = {name: float((q.scale().detach() / initial[name]).mean()) for name, q in quantizers.items() if q.is_static}
    row = {
        **settings,
        "train": asdict(config),
        "scales": str(output),
        "loss_curve": result.loss_curve,
        "steps": result.steps,
        "skipped_steps": result.skipped_steps,
        "resumed_from": result.resumed_from,
        "train_seconds": result.seconds,
        "scale_ratio_trained_to_init": ratios,
        "seconds": time.perf_counter() - began,
        **environment(args.device),
    }
    write_json(output.with_suffix(".json"), row)


def _eval_ids(args, lm):
    _check_seqlen(lm.model, args.seqlen, "--seqlen")
    corpus = load_corpus(args.eval_corpus, args.eval_split, args.data_dir, args.tinystories_dir)
    return corpus, eval_windows(tokenize(lm.tokenizer, corpus.text), args.seqlen, args.eval_windows)


def cmd_evaluate(args) -> None:
    from sasq.evaluate import perplexity

    began = time.perf_counter()
    _require_trained_scales(args)
    lm, method, scheme, quantizers, _ = _prepare(args, default_scales=args.scales)
    corpus, windows = _eval_ids(args, lm)
    result = perplexity(lm.model, windows, batch_size=args.eval_batch_size, desc=f"{method.name} ppl")
    settings = _settings(args, lm, method, scheme)
    _merge_scales_settings(settings, args.scales)
    row = {
        **settings,
        "train_corpus": settings.get("train_corpus"),
        "train_windows": settings.get("train_windows", 0),
        "scales": args.scales,
        "eval_corpus": args.eval_corpus,
        "eval_split": args.eval_split,
        "eval_source": corpus.source,
        "seqlen": args.seqlen,
        "eval_windows": result.windows,
        "eval_tokens": result.tokens,
        "ppl": result.ppl,
        "nll_sum": result.nll_sum,
        "seconds": time.perf_counter() - began,
        **environment(args.device),
    }
    write_json(args.output, row)
    print(f"{method.name}: ppl {result.ppl:.4f} on {result.windows} windows of {args.seqlen} tokens")


def _require_trained_scales(args) -> None:
    method = get_method(args.method)
    if method.trains and not args.scales:
        raise ValueError(f"method {method.name} trains its scales; run `sasq train` first and pass its output as --scales")


def _merge_scales_settings(settings: dict, scales: str | None) -> None:
    """Copy the calibration and training settings recorded in a scales file into a result row."""
    if not scales:
        return
    saved = read_scales_metadata(scales).get("extra", {})
    keys = ("train_corpus", "train_split", "train_source", "train_windows", "train_windows_sha256", "train_seqlen")
    keys += ("calib_corpus", "calib_split", "calib_windows", "calib_seqlen")
    for key in keys:
        if key in saved:
            settings[key] = saved[key]


def cmd_diagnose(args) -> None:
    from sasq.diagnostics import quantizer_errors

    if get_method(args.method).gains:
        raise ValueError(f"method {args.method} has gains, not quantizers, so there is no clipping to diagnose; use a static method")
    lm, method, scheme, quantizers, _ = _prepare(args, default_scales=args.scales)
    _, windows = _eval_ids(args, lm)
    rows = quantizer_errors(lm.model, quantizers, windows)
    settings = _settings(args, lm, method, scheme)
    _merge_scales_settings(settings, args.scales)
    write_json(args.output, {**settings, "scales": args.scales, "quantizers": rows})


def cmd_generate(args) -> None:
    from sasq.generate import DEFAULT_PROMPTS, greedy_continuations, read_prompts

    began = time.perf_counter()
    _require_trained_scales(args)
    prompts = read_prompts(args.prompts) if args.prompts else list(DEFAULT_PROMPTS)
    lm, method, scheme, _, _ = _prepare(args, default_scales=args.scales)
    continuations = greedy_continuations(lm.model, lm.tokenizer, prompts, args.max_new_tokens)
    settings = _settings(args, lm, method, scheme)
    _merge_scales_settings(settings, args.scales)
    row = {
        **settings,
        "scales": args.scales,
        "prompts_file": args.prompts,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
        "generations": [asdict(continuation) for continuation in continuations],
        "seconds": time.perf_counter() - began,
        **environment(args.device),
    }
    write_json(args.output, row)
    for continuation in continuations:
        print(f"{method.name}: {continuation.prompt!r} -> {continuation.continuation!r}")


def cmd_zeroshot(args) -> None:
    from sasq.zeroshot import ZeroShotConfig, import_lm_eval, run_zeroshot

    began = time.perf_counter()
    config = ZeroShotConfig(
        tasks=tuple(name.strip() for name in args.tasks.split(",") if name.strip()),
        local_files=tuple(args.local_task),
        limit=args.limit,
        batch_size=args.eval_batch_size,
        offline=not args.online,
        log_samples=args.log_samples,
    )
    import_lm_eval()
    _require_trained_scales(args)
    lm, method, scheme, _, _ = _prepare(args, default_scales=args.scales)
    result = run_zeroshot(lm.model, lm.tokenizer, config)
    settings = _settings(args, lm, method, scheme)
    _merge_scales_settings(settings, args.scales)
    row = {
        **settings,
        "scales": args.scales,
        "num_fewshot": 0,
        "limit": args.limit,
        "offline": config.offline,
        **result,
        "seconds": time.perf_counter() - began,
        **environment(args.device),
    }
    write_json(args.output, row)
    for name, metrics in result["tasks"].items():
        print(f"{method.name}: {name} acc {metrics.get('acc', float('nan')):.4f} on {metrics['documents']} documents")
    for name, reason in result["skipped"].items():
        print(f"{method.name}: {name} skipped ({reason})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"sasq {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; rerun the same command to resume from the last checkpoint" if args.command == "train" else ""
        print(f"sasq {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
