"""Tiny random-weight checkpoints of both released C2S architectures, saved like real ones.

``build_tiny_checkpoint(path, arch)`` writes a folder exactly as ``save_pretrained`` does for
the released models (config.json, model.safetensors, tokenizer files), with a few hundred
thousand parameters and a tokenizer trained here. Test modules get the session-scoped
fixtures with ``pytest_plugins = ["tiny_checkpoints"]`` (and the builder through the
``build_checkpoint`` fixture rather than an import, so pytest can register this module as a
plugin before anything imports it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import train_tiny_tokenizer
from transformers import AutoModelForCausalLM, Gemma2Config, GPTNeoXConfig, PretrainedConfig

GENES = (
    "MALAT1 B2M TMSB4X EEF1A1 RPL13 RPS27 CD74 HLA-DRA LYZ S100A9 S100A8 CD3E CD3D IL7R "
    "CCR7 MS4A1 CD79A NKG7 GNLY FCGR3A CST3 FTL FTH1 TPT1 ACTB GAPDH PPBP PF4 CD14 LST1"
)
WORDS = (
    "The cell type corresponding to these genes is : Cell sentence . Generate a list of "
    "genes in order of descending expression which represent Homo sapiens Mus musculus "
    "B T NK monocyte platelet"
)
ARCHITECTURES = ("gpt_neox", "gemma2")


def tiny_config(arch: str, vocab_size: int) -> PretrainedConfig:
    """Config of a ~0.3-0.5M-parameter model of the architecture ``arch``."""
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=512,
            max_position_embeddings=256,
            tie_word_embeddings=False,
        )
    if arch == "gemma2":
        return Gemma2Config(
            vocab_size=vocab_size,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            intermediate_size=512,
            max_position_embeddings=256,
            sliding_window=64,
            query_pre_attn_scalar=32,
        )
    raise ValueError(f"arch must be one of {ARCHITECTURES}, not {arch!r}")


def build_tiny_checkpoint(
    path: Path, arch: str, *, seed: int = 0, card: dict | None = None, safetensors: bool = True
) -> Path:
    """Save a tiny random model of ``arch`` with its tokenizer (and ``c2s.json`` card) to ``path``.

    With ``safetensors=False`` the weights are written as a pickled ``pytorch_model.bin``
    (a real ``torch.save`` of the state dict), as old checkpoints are.
    """
    tokenizer = train_tiny_tokenizer([GENES, WORDS], vocab_size=200)
    config = tiny_config(arch, vocab_size=len(tokenizer))
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    path.mkdir(parents=True, exist_ok=True)
    if safetensors:
        model.save_pretrained(path, safe_serialization=True)
    else:
        config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    tokenizer.save_pretrained(path)
    if card is not None:
        (path / "c2s.json").write_text(json.dumps(card), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_gpt_neox_dir(tmp_path_factory) -> Path:
    """A saved tiny GPTNeoXForCausalLM (the Pythia architecture), without a c2s.json card."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "gpt_neox", "gpt_neox")


@pytest.fixture(scope="session")
def tiny_gemma2_dir(tmp_path_factory) -> Path:
    """A saved tiny Gemma2ForCausalLM (the C2S-Scale Gemma architecture) with a c2s.json card."""
    card = {
        "base": "vandijklab/C2S-Scale-Gemma-2-2B",
        "tasks": ["cell_type_prediction", "spatial_*"],
        "context_length": 256,
        "top_k": 16,
    }
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "gemma2", "gemma2", card=card)


@pytest.fixture(scope="session")
def build_checkpoint():
    """:func:`build_tiny_checkpoint`, for tests that need a variant of the tiny checkpoints."""
    return build_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_prompt() -> str:
    """Six gene symbols the tiny tokenizers know, one token each."""
    return " ".join(GENES.split()[:6])
