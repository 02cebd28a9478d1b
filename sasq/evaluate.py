"""Perplexity by the GPTQ protocol: non-overlapping windows, each scored on its own.

``PPL = exp(mean token NLL)`` over all predicted tokens (``seqlen - 1`` per window). This is
token-level perplexity, the number GPTQ, SmoothQuant, QuaRot and SASQ report; lm-eval's
``wikitext`` task reports word perplexity, a different metric.

Example:
    >>> from sasq.data import eval_windows                           # doctest: +SKIP
    >>> result = perplexity(model, eval_windows(ids, 2048))          # doctest: +SKIP
    >>> round(result.ppl, 2)                                         # doctest: +SKIP
    21.61
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity with the totals it was computed from."""

    ppl: float
    nll_sum: float
    tokens: int
    windows: int


def window_nll(model: nn.Module, batch: Tensor) -> Tensor:
    """Summed next-token negative log-likelihood of each window, shape ``[batch]``, float64."""
    logits = model(batch).logits
    shifted = logits[:, :-1, :].float()
    targets = batch[:, 1:]
    losses = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), reduction="none")
    return losses.view(batch.shape[0], -1).double().sum(dim=1)


@torch.no_grad()
def perplexity(model: nn.Module, windows: Tensor, batch_size: int = 1, desc: str = "perplexity") -> PerplexityResult:
    """Perplexity of ``model`` over ``windows`` (``[n, seqlen]`` token ids).

    Args:
        model: a causal LM returning ``.logits``.
        windows: token ids, one window per row.
        batch_size: windows per forward pass (memory only; the result does not depend on it).
        desc: progress bar label.
    """
    device = next(model.parameters()).device
    total = 0.0
    tokens = 0
    progress = tqdm(range(0, windows.shape[0], batch_size), desc=desc, unit="batch")
    for start in progress:
        batch = windows[start : start + batch_size].to(device)
        total += float(window_nll(model, batch).sum())
        tokens += batch.shape[0] * (batch.shape[1] - 1)
        progress.set_postfix(ppl=f"{math.exp(total / tokens):.3f}")
    ppl = math.exp(total / tokens)
    log.info("%s: ppl %.4f over %d windows (%d predicted tokens)", desc, ppl, windows.shape[0], tokens)
    return PerplexityResult(ppl=ppl, nll_sum=total, tokens=tokens, windows=int(windows.shape[0]))
