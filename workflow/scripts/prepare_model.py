"""Fetch or convert one model so later jobs load it from disk, and record its parameter count.

Source names (``smollm2-135m``) are converted once by :func:`sasq.models.resolve_model_path`;
hub ids are downloaded into the Hugging Face cache. The parameter count comes from the model's
config on the meta device, so no weights are loaded.
"""

import json
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from sasq.models import resolve_model_path

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
log = logging.getLogger("prepare_model")

ref = snakemake.params.ref
location, gguf_file = resolve_model_path(ref)
if not Path(location).exists():
    from huggingface_hub import snapshot_download

    log.info("downloading %s from the hub", ref)
    location = snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "tokenizer*"])

extra = {"gguf_file": gguf_file} if gguf_file else {}
model_config = AutoConfig.from_pretrained(location, **extra)
with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(model_config)
# parameters() yields a tied lm_head/embedding matrix once, so it is counted once.
parameters = sum(p.numel() for p in model.parameters())

info = {"model": snakemake.wildcards.model, "ref": ref, "location": str(location), "parameters": parameters}
log.info("prepared %s", info)
Path(snakemake.output[0]).write_text(json.dumps(info, indent=2) + "\n")
