"""Saving and loading static activation scales as safetensors.

Keys are ``<quantizer name>.scale`` and ``<quantizer name>.zero_point`` (no zero point for the
float gains of :mod:`sasq.gain`); the metadata contains the model's fingerprint
(:func:`sasq.models.model_fingerprint`) and each module's ``describe()`` (the activation spec, or
the gain's kind), so a file made for another model or scheme is refused with a message saying
what differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import SafetensorError, safe_open

from sasq.gain import TrainableScale


def save_scales(path: str | Path, quantizers: dict[str, TrainableScale], fingerprint: dict, extra: dict | None = None) -> None:
    """Write every static quantizer's scale and zero point (or every gain) to ``path`` (atomically)."""
    tensors = {}
    specs = {}
    for name, quantizer in quantizers.items():
        if not quantizer.is_static:
            continue
        tensors[f"{name}.scale"] = quantizer.scale().detach().float().cpu().contiguous()
        zero_point = getattr(quantizer, "zero_point", None)
        if zero_point is not None:
            tensors[f"{name}.zero_point"] = zero_point.detach().float().cpu().contiguous()
        specs[name] = quantizer.describe()
    if not tensors:
        raise ValueError("the model has no static quantizers; there are no scales to save")
    metadata = {"fingerprint": json.dumps(fingerprint, sort_keys=True), "specs": json.dumps(specs), "extra": json.dumps(extra or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def read_scales_metadata(path: str | Path) -> dict:
    """Return the decoded metadata of a scales file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"scales file {path} not found; run `sasq calibrate` or `sasq train` to make one")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
        return {key: json.loads(value) for key, value in raw.items()}
    except (SafetensorError, json.JSONDecodeError) as err:
        raise ValueError(f"scales file {path} is not a valid scales file ({err}); pass a file written by `sasq calibrate` or `sasq train`") from err


def load_scales(path: str | Path, quantizers: dict[str, TrainableScale], fingerprint: dict) -> None:
    """Set the static quantizers' scales (or the gains) from ``path``, checking it fits this model and scheme."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scales file {path} not found; run `sasq calibrate` or `sasq train` to make one")
    meta = read_scales_metadata(path)
    saved = meta.get("fingerprint")
    if saved != fingerprint:
        diff = {k: (saved.get(k) if saved else None, v) for k, v in fingerprint.items() if not saved or saved.get(k) != v}
        raise ValueError(f"scales file {path} was made for another model (saved vs this model: {diff}); use scales trained on this model")
    tensors = load_file(str(path))
    static = {name: q for name, q in quantizers.items() if q.is_static}
    specs = meta.get("specs", {})
    for name, quantizer in static.items():
        if f"{name}.scale" not in tensors:
            raise ValueError(f"scales file {path} has no scale for quantizer {name}; it was made with another quantizer layout")
        if specs.get(name) != quantizer.describe():
            raise ValueError(f"scales file {path} contains {specs.get(name)} scales for {name}, but the model uses {quantizer.describe()}; match --abits/--granularity")
        quantizer.set_scale(tensors[f"{name}.scale"], tensors.get(f"{name}.zero_point"))
    unused = {key.rsplit(".", 1)[0] for key in tensors} - set(static)
    if unused:
        raise ValueError(f"scales file {path} has scales for quantizers this model lacks ({sorted(unused)[:3]}...); check --method and the model")
