"""Saving and loading static activation scales as safetensors.

Keys are ``<quantizer name>.scale`` and ``<quantizer name>.zero_point``; the metadata holds the
model's fingerprint (:func:`sasq.models.model_fingerprint`) and the activation spec, so a file
made for another model or scheme is refused with a message saying what differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import SafetensorError, safe_open

from sasq.quantizer import ActivationQuantizer


def save_scales(path: str | Path, quantizers: dict[str, ActivationQuantizer], fingerprint: dict, extra: dict | None = None) -> None:
    """Write every static quantizer's scale and zero point to ``path`` (atomically)."""
    tensors = {}
    specs = {}
    for name, quantizer in quantizers.items():
        if not quantizer.is_static:
            continue
        tensors[f"{name}.scale"] = quantizer.scale().detach().float().cpu().contiguous()
        tensors[f"{name}.zero_point"] = quantizer.zero_point.detach().float().cpu().contiguous()
        specs[name] = quantizer.spec.describe()
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


def load_scales(path: str | Path, quantizers: dict[str, ActivationQuantizer], fingerprint: dict) -> None:
    """Set the static quantizers' scales from ``path``, checking it fits this model and scheme."""
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
        if specs.get(name) != quantizer.spec.describe():
            raise ValueError(f"scales file {path} holds {specs.get(name)} scales for {name}, but the model uses {quantizer.spec.describe()}; match --abits/--granularity")
        quantizer.set_scale(tensors[f"{name}.scale"], tensors[f"{name}.zero_point"])
    unused = {key.rsplit(".", 1)[0] for key in tensors} - set(static)
    if unused:
        raise ValueError(f"scales file {path} has scales for quantizers this model lacks ({sorted(unused)[:3]}...); check --method and the model")
