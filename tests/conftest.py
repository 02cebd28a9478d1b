"""Shared fixtures: the stories260K model, WikiText-2 and TinyStories files, small seeded LLaMA models, an exact float64 RMSNorm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

from sasq.models import load_model

STORIES_DIR = Path("/work/shared/assets/stories260K-hf")
WIKITEXT_DIR = Path("/work/shared/assets/wikitext-2-raw")
TINYSTORIES_DIR = Path("/work/shared/assets/tinystories")

torch.set_num_threads(1)


@pytest.fixture
def stories_path() -> Path:
    """Folder of the stories260K Hugging Face model."""
    if not STORIES_DIR.is_dir():
        pytest.skip(f"stories260K model not found at {STORIES_DIR}")
    return STORIES_DIR


@pytest.fixture
def stories(stories_path):
    """stories260K loaded by :func:`sasq.models.load_model` (float32, with its tokenizer)."""
    return load_model(str(stories_path))


@pytest.fixture
def wikitext_dir() -> Path:
    """Folder with the WikiText-2 raw test and validation files."""
    if not (WIKITEXT_DIR / "wiki.test.raw").is_file():
        pytest.skip(f"WikiText-2 raw files not found in {WIKITEXT_DIR}")
    return WIKITEXT_DIR


@pytest.fixture
def tinystories_dir() -> Path:
    """Folder with the TinyStories text ``tinystories_train_head.txt``."""
    if not (TINYSTORIES_DIR / "tinystories_train_head.txt").is_file():
        pytest.skip(f"TinyStories text not found in {TINYSTORIES_DIR}")
    return TINYSTORIES_DIR


def tiny_llama(seed: int = 0, heads: int = 4, kv_heads: int = 2, tied: bool = True) -> LlamaForCausalLM:
    """A random float32 2-layer LLaMA (hidden 32, intermediate 64, vocab 64), tied embeddings by default."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny() -> LlamaForCausalLM:
    """:func:`tiny_llama` with its defaults."""
    return tiny_llama()


@pytest.fixture
def float64_rmsnorm(monkeypatch):
    """Compute LlamaRMSNorm in its input dtype.

    transformers 5.25 upcasts the norm to float32 even for float64 inputs, which caps an
    invariance check at float32 rounding (about 1e-7); the transforms are tested in exact float64.
    """

    def forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every RMSNorm a non-trivial weight in [0.5, 1.5) so that fusing and smoothing are exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator, dtype=torch.float64).to(parameter.dtype))


def tiny_gqa_llama(tied: bool = True, seed: int = 0) -> LlamaForCausalLM:
    """A random float64 2-layer LLaMA with grouped-query attention (6 query heads, 2 KV heads) and random norm weights."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    model = LlamaForCausalLM(config).double().eval()
    randomize_norms(model, seed)
    return model


def llama2_7b_one_layer(seed: int = 0) -> LlamaForCausalLM:
    """One random decoder layer with LLaMA-2-7B's sizes (hidden 4096, intermediate 11008, 32 heads), vocab 32, float64."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=1,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).double().eval()
    randomize_norms(model, seed)
    return model


def stories260k_float64() -> LlamaForCausalLM:
    """Karpathy's stories260K (5 layers, hidden 64, intermediate 172, GQA 8/4, tied embeddings), float64."""
    if not STORIES_DIR.is_dir():
        pytest.skip(f"stories260K model not found at {STORIES_DIR}")
    return AutoModelForCausalLM.from_pretrained(STORIES_DIR).double().eval()


def relative_max_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """``max|output - reference| / max|reference|``."""
    return float((output - reference).abs().max() / reference.abs().max())


def record_batches(model: torch.nn.Module) -> list[torch.Tensor]:
    """Wrap ``model.forward`` so that each call appends a copy of its ``input_ids`` to the returned list."""
    batches: list[torch.Tensor] = []
    original = model.forward

    def recording_forward(input_ids, *args, **kwargs):
        batches.append(input_ids.clone())
        return original(input_ids, *args, **kwargs)

    model.forward = recording_forward
    return batches
