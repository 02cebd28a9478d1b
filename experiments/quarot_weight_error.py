"""Measure RTN weight-quantization error of SmolLM2-135M before and after QuaRot's rotation.

The script prints, for every projection type, the relative output error
``||X (Q(W) - W)^T|| / ||X W^T||`` averaged over the layers. ``X`` contains the real inputs of one
WikiText-2 test window and ``Q`` is the suite's symmetric per-output-channel RTN. Three stages of
QuaRot's transform are measured: the original model, the model with its RMSNorm weights fused
into the next linears, and that model rotated.
It separates the two steps' effects on the weight error, which explains why QuaRot with RTN
weights can lose to plain RTN at 4 bits.

    SASQ_WIKITEXT_DIR=../shared/assets/wikitext-2-raw python experiments/quarot_weight_error.py --bits 4
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from baselines.quarot import fuse_rmsnorms, rotate_model, untie_embeddings
from sasq.data import eval_windows, load_corpus, tokenize
from sasq.models import load_model
from sasq.qlinear import TransformedLinear
from sasq.quantizer import fake_quantize_weight
from sasq.spec import QuantSpec

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@torch.no_grad()
def relative_errors(model: nn.Module, window: torch.Tensor, spec: QuantSpec) -> dict[str, float]:
    """Return the relative RTN output error of every decoder linear on the inputs of ``window``."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] in PROJECTIONS:

            def keep_input(module, args, output, name=name):
                inputs[name] = args[0].reshape(-1, args[0].shape[-1])

            hooks.append(module.register_forward_hook(keep_input))
    model(window)
    for hook in hooks:
        hook.remove()
    errors = {}
    for name, module in model.named_modules():
        if name not in inputs:
            continue
        x = inputs[name]
        if isinstance(module, TransformedLinear):
            x = module.input_transform(x)
        weight = module.weight
        delta = fake_quantize_weight(weight, spec) - weight
        errors[name] = ((x @ delta.T).norm() / (x @ weight.T).norm()).item()
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(args.model)
    window = eval_windows(tokenize(loaded.tokenizer, load_corpus("wikitext2", "test").text), args.seqlen, 1)
    spec = QuantSpec(bits=args.bits, granularity="per-channel")
    before = relative_errors(loaded.model, window, spec)
    untie_embeddings(loaded.model)
    fuse_rmsnorms(loaded.model)
    fused = relative_errors(loaded.model, window, spec)
    rotate_model(loaded.model)  # the norms are already fused (weight 1), so this adds the rotations only
    after = relative_errors(loaded.model, window, spec)
    print(f"W{args.bits} RTN relative output error, mean over layers ({args.model}, 1 window of {args.seqlen})")
    print("| projection | original | norms fused | norms fused and rotated (QuaRot) |\n| --- | ---: | ---: | ---: |")
    for projection in PROJECTIONS:
        names = [name for name in before if name.endswith(projection)]
        print(f"| {projection} | {statistics.mean(before[n] for n in names):.4f} | {statistics.mean(fused[n] for n in names):.4f} | {statistics.mean(after[n] for n in names):.4f} |")


if __name__ == "__main__":
    main()
