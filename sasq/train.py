"""SASQ stage 2: train only the static activation scales on next-token cross-entropy.

The optimiser holds the quantizers' scale parameters and nothing else; every other tensor of
the model is hashed before training and checked bit for bit afterwards. Gradients reach the
scales through the fake-quant graph by the straight-through estimator (see
:mod:`sasq.quantizer`). Training is resumable: a checkpoint written every
``checkpoint_every`` steps holds the scales, the optimiser state, the step and the loss curve,
and a rerun with the same settings continues from it with the same data order.

Example:
    >>> result = train_scales(model, quantizers, windows, TrainConfig(lr=2e-2))   # doctest: +SKIP
    >>> result.loss_curve[:2]                                                     # doctest: +SKIP
    [3.12, 3.08]
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sasq.gain import TrainableScale

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the scale training.

    Args:
        lr: AdamW learning rate. With the default ``log`` parametrization a step of ``lr``
            changes a scale by about ``lr`` relative (1e-3 = 0.1 %).
        epochs: passes over the training windows.
        batch_size: windows per optimiser step.
        grad_clip: maximum global gradient norm, or ``None`` for no clipping.
        weight_decay: AdamW weight decay on the raw scale parameter (0 keeps scales unbiased).
        seed: seeds the window order of every epoch.
        checkpoint_every: steps between checkpoints (0 disables them).
        max_steps: stop after this many steps in total, or ``None`` for all epochs.
    """

    lr: float = 2e-2
    epochs: int = 1
    batch_size: int = 1
    grad_clip: float | None = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 50
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} is invalid; use a positive learning rate")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} is invalid; use at least 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} is invalid; use at least 1")


@dataclass
class TrainResult:
    """Record of a training run: one loss per step, steps and skipped steps, wall time."""

    loss_curve: list[float] = field(default_factory=list)
    steps: int = 0
    skipped_steps: int = 0
    seconds: float = 0.0
    resumed_from: int = 0


def frozen_digest(model: nn.Module, trainable: set[int]) -> str:
    """SHA-256 over every parameter and buffer of ``model`` except the ids in ``trainable``."""
    digest = hashlib.sha256()
    seen: set[int] = set()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if id(tensor) in trainable or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def windows_digest(windows: Tensor) -> str:
    """Hash the training windows' token ids in order (SHA-256 hex), so result rows show which runs saw the same data."""
    return hashlib.sha256(windows.cpu().contiguous().numpy().tobytes()).hexdigest()


def _batch_indices(step: int, count: int, config: TrainConfig) -> Tensor:
    steps_per_epoch = math.ceil(count / config.batch_size)
    epoch, position = divmod(step, steps_per_epoch)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
    return order[position * config.batch_size : (position + 1) * config.batch_size]


def train_scales(
    model: nn.Module,
    quantizers: dict[str, TrainableScale],
    windows: Tensor,
    config: TrainConfig,
    checkpoint_path: str | Path | None = None,
) -> TrainResult:
    """Train the static scales of ``quantizers`` (or the gains of a gain method) on ``windows`` (``[n, seqlen]`` token ids).

    Raises:
        ValueError: there is no static scale to train, or a checkpoint was made with other settings.
        RuntimeError: a tensor other than a scale changed during training.
    """
    static = {name: q for name, q in quantizers.items() if q.is_static}
    if not static:
        raise ValueError("the model has no static activation scales to train; use a static method")
    for name, quantizer in static.items():
        if not quantizer.initialized:
            raise ValueError(f"quantizer {name} has no initial scale; calibrate before training")
    model.requires_grad_(False)
    params = [q.raw_scale for q in static.values()]
    for param in params:
        param.requires_grad_(True)
    trainable = {id(p) for p in params}
    unexpected = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in trainable]
    assert not unexpected, f"parameters other than scales would train: {unexpected[:3]}"
    before = frozen_digest(model, trainable)

    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(windows.shape[0] / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    result = TrainResult()
    identity = {"config": asdict(config), "windows": windows_digest(windows), "quantizers": sorted(static)}
    checkpoint = Path(checkpoint_path) if checkpoint_path else None
    start = _resume(checkpoint, identity, static, optimizer, result) if checkpoint else 0

    device = next(model.parameters()).device
    began = time.perf_counter()
    progress = tqdm(range(start, total), desc="train scales", unit="step", initial=start, total=total)
    running = None
    for step in progress:
        batch = windows[_batch_indices(step, windows.shape[0], config)].to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = model(batch, labels=batch).loss
        loss.backward()
        grads_finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
        if not torch.isfinite(loss) or not grads_finite:
            result.skipped_steps += 1
            log.warning("step %d: loss %.4g or a gradient is not finite; step skipped", step, float(loss))
            result.loss_curve.append(float("nan"))
            continue
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        for quantizer in static.values():
            quantizer.project_()
        value = float(loss.detach())
        result.loss_curve.append(value)
        running = value if running is None else 0.9 * running + 0.1 * value
        progress.set_postfix(loss=f"{running:.4f}")
        if checkpoint and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < total:
            _save_checkpoint(checkpoint, identity, step + 1, static, optimizer, result)
    result.steps = total
    result.seconds = time.perf_counter() - began
    for param in params:
        param.requires_grad_(False)
    if frozen_digest(model, trainable) != before:
        raise RuntimeError("a model tensor other than the activation scales changed during training")
    if checkpoint and checkpoint.exists():
        checkpoint.unlink()
    log.info("trained %d scales for %d steps in %.1f s", len(static), total - start, result.seconds)
    return result


def _save_checkpoint(path: Path, identity: dict, step: int, static: dict, optimizer, result: TrainResult) -> None:
    state = {
        "identity": identity,
        "step": step,
        "raw_scales": {name: q.raw_scale.detach().cpu().clone() for name, q in static.items()},
        "optimizer": optimizer.state_dict(),
        "loss_curve": list(result.loss_curve),
        "skipped_steps": result.skipped_steps,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    tmp.replace(path)
    log.info("checkpoint at step %d written to %s", step, path)


def _resume(path: Path, identity: dict, static: dict, optimizer, result: TrainResult) -> int:
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["identity"] != identity:
        saved_config, config = state["identity"]["config"], identity["config"]
        differing = [f"{key} {saved_config.get(key)!r} -> {value!r}" for key, value in config.items() if saved_config.get(key) != value]
        if state["identity"]["windows"] != identity["windows"]:
            differing.append("training windows")
        raise ValueError(
            f"checkpoint {path} was made with other settings ({', '.join(differing) or 'quantizers'}); "
            f"delete it or rerun with the same settings"
        )
    with torch.no_grad():
        for name, quantizer in static.items():
            quantizer.raw_scale.copy_(state["raw_scales"][name])
    optimizer.load_state_dict(state["optimizer"])
    result.loss_curve = list(state["loss_curve"])
    result.skipped_steps = state["skipped_steps"]
    result.resumed_from = state["step"]
    log.info("resuming from %s at step %d", path, state["step"])
    return int(state["step"])
