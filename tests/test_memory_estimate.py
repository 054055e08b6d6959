"""Memory estimator against hand-computed numbers for known configs, and device/precision choice."""

from __future__ import annotations

import math
import warnings

import anndata as ad
import numpy as np
import pytest
import torch
from transformers import Gemma2Config, GPTNeoXConfig

from c2s_engine.errors import DeviceUnavailableError
from c2s_engine.models import estimate_memory, load_model, resolve_target
from c2s_engine.models.memory import CUDA_WORKSPACE_BYTES, kv_cache_bytes

pytest_plugins = ["tiny_checkpoints"]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks behaviour without CUDA")

# Pythia-410M and Gemma-2 shapes (EleutherAI/pythia-410m, google/gemma-2-2b and -27b configs).
PYTHIA_410M = {"h": 1024, "layers": 24, "heads": 16, "vocab": 50304, "inter": 4096}
GEMMA_2B = {"h": 2304, "layers": 26, "heads": 8, "kv": 4, "hd": 256, "inter": 9216, "vocab": 256000}
GEMMA_27B = {
    "h": 4608, "layers": 46, "heads": 32, "kv": 16, "hd": 128, "inter": 36864, "vocab": 256000,
}  # fmt: skip


def pythia_config(s=PYTHIA_410M) -> GPTNeoXConfig:
    return GPTNeoXConfig(
        hidden_size=s["h"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        vocab_size=s["vocab"],
        intermediate_size=s["inter"],
        tie_word_embeddings=False,
    )


def gemma_config(s=GEMMA_2B) -> Gemma2Config:
    return Gemma2Config(
        hidden_size=s["h"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        head_dim=s["hd"],
        intermediate_size=s["inter"],
        vocab_size=s["vocab"],
    )


def pythia_linears(s=PYTHIA_410M) -> list[tuple[int, int]]:
    """(in, out) of the layers bitsandbytes quantises: qkv, dense, fc1, fc2; not embed_out."""
    h, i = s["h"], s["inter"]
    return [(h, 3 * h), (h, h), (h, i), (i, h)] * s["layers"]


def gemma_linears(s) -> list[tuple[int, int]]:
    """q, k, v, o, gate, up, down of each layer; lm_head is tied to the embeddings."""
    h, q, kv, i = s["h"], s["heads"] * s["hd"], s["kv"] * s["hd"], s["inter"]
    return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)] * s["layers"]


def nf4_bytes(n_in: int, n_out: int) -> int:
    """NF4 with double quantisation: 4 bits/weight, a uint8 absmax per 64 weights, and an fp32
    absmax per 256 of those blocks."""
    weights = n_in * n_out
    blocks = math.ceil(weights / 64)
    return weights // 2 + blocks + 4 * math.ceil(blocks / 256)


def pythia_parameters(s=PYTHIA_410M) -> int:
    h, i, v = s["h"], s["inter"], s["vocab"]
    per_layer = (h * 3 * h + 3 * h) + (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
    return 2 * v * h + s["layers"] * per_layer + 2 * h  # embed_in, embed_out untied


def gemma_parameters(s) -> int:
    h, q, kv = s["h"], s["heads"] * s["hd"], s["kv"] * s["hd"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * s["inter"] + 4 * h  # 4 RMSNorms
    return s["vocab"] * h + s["layers"] * per_layer + h  # lm_head tied to the embeddings


def test_parameter_counts_from_config_alone():
    assert pythia_parameters() == 405_334_016
    assert gemma_parameters(GEMMA_2B) == 2_614_341_888
    pythia = estimate_memory(pythia_config(), "fp32", device="cpu", available_bytes=10**12)
    assert pythia.n_parameters == 405_334_016
    gemma = estimate_memory(gemma_config(), "bf16", device="cpu", available_bytes=10**12)
    assert gemma.n_parameters == 2_614_341_888
    assert pythia.weights_bytes == 4 * 405_334_016
    assert gemma.weights_bytes == 2 * 2_614_341_888


def test_4bit_and_8bit_weights_by_hand():
    h, layers = PYTHIA_410M["h"], PYTHIA_410M["layers"]
    biases = layers * (3 * h + h + PYTHIA_410M["inter"] + h)
    unquantised = 2 * PYTHIA_410M["vocab"] * h + layers * 4 * h + 2 * h  # embeddings + norms
    linears = pythia_linears()
    expected_4bit = sum(nf4_bytes(*shape) for shape in linears) + 2 * (biases + unquantised)
    expected_8bit = sum(i * o + 4 * o for i, o in linears) + 2 * (biases + unquantised)
    for precision, expected in (("4bit", expected_4bit), ("8bit", expected_8bit)):
        est = estimate_memory(
            pythia_config(), precision, device="cuda", available_bytes=10**12, advise=False
        )
        assert est.weights_bytes == expected, precision
    # ~0.52 B per quantised weight, but the untied 50k-word embeddings stay in bf16.
    assert 0.36e9 < expected_4bit < 0.37e9


def test_gemma_27b_in_4bit_is_about_16_gb():
    s = GEMMA_27B
    unquantised = s["vocab"] * s["h"] + s["layers"] * 4 * s["h"] + s["h"]
    expected = sum(nf4_bytes(*shape) for shape in gemma_linears(s)) + 2 * unquantised
    est = estimate_memory(
        "vandijklab/C2S-Scale-Gemma-2-27B", "4bit", 1, 2048, device="cuda", available_bytes=10**12
    )
    assert est.n_parameters == gemma_parameters(s) == 27_227_128_320
    assert est.weights_bytes == expected
    assert round(est.weights_bytes / 1e9) == 16


def test_kv_cache_formula():
    pythia = pythia_config()
    assert kv_cache_bytes(pythia, "fp32", 2, 1024) == 2 * 24 * 16 * 64 * 1024 * 2 * 4
    gemma = gemma_config()
    assert kv_cache_bytes(gemma, "bf16", 3, 4096) == 2 * 26 * 4 * 256 * 4096 * 3 * 2
    assert kv_cache_bytes(gemma, "4bit", 3, 4096) == kv_cache_bytes(gemma, "bf16", 3, 4096)


def test_totals_add_activations_and_margin():
    est = estimate_memory(pythia_config(), "fp32", 2, 1024, device="cpu", available_bytes=10**12)
    # SDPA attention: no score matrix; 4 hidden + 3 intermediate per token, plus last logits.
    assert est.activation_bytes == 2 * 1024 * (4 * 1024 + 3 * 4096) * 4 + 2 * 50304 * 4
    assert est.kv_cache_bytes == 2 * 24 * 16 * 64 * 1024 * 2 * 4
    core = est.weights_bytes + est.kv_cache_bytes + est.activation_bytes
    assert est.overhead_bytes == int(0.1 * core)
    assert est.total_bytes == core + est.overhead_bytes
    gemma = estimate_memory(gemma_config(), "bf16", 1, 1024, device="cuda", available_bytes=10**12)
    eager_scores = 8 * 1024**2 * (4 + 2)  # Gemma-2 attention is eager (soft-capping)
    assert gemma.activation_bytes == 1024 * (4 * 2304 + 3 * 9216) * 2 + eager_scores + 256000 * 4
    core = gemma.weights_bytes + gemma.kv_cache_bytes + gemma.activation_bytes
    assert gemma.overhead_bytes == int(0.1 * core) + CUDA_WORKSPACE_BYTES


def test_advice_when_it_does_not_fit_names_a_smaller_model():
    est = estimate_memory(
        "vandijklab/C2S-Scale-Gemma-2-27B",
        "4bit",
        1,
        2048,
        device="cuda",
        available_bytes=11 * 10**9,
    )
    assert not est.fits
    assert est.advice.startswith(
        "vandijklab/C2S-Scale-Gemma-2-27B (27.2B parameters) needs ~20.2 GB in 4bit on cuda "
        "(weights 15.8 GB, KV cache 0.8 GB and activations 1.3 GB for 1 x 2048 tokens"
    )
    assert "; you have 11.0 GB free: use vandijklab/C2S-Scale-Gemma-2-2B (~3.6 GB)" in est.advice


def test_advice_when_it_fits_and_when_nothing_fits():
    fits = estimate_memory(
        "vandijklab/C2S-Pythia-410m-cell-type-prediction", "fp32", device="cpu",
        available_bytes=50 * 10**9,
    )  # fmt: skip
    assert fits.fits and fits.context_length == 2048  # the card's context length
    assert fits.advice.endswith("; 50.0 GB free: it fits")
    nothing = estimate_memory(
        "vandijklab/C2S-Pythia-410m-cell-type-prediction", "fp32", device="cpu",
        available_bytes=10**6,
    )  # fmt: skip
    assert nothing.advice.endswith(
        "you have 0.0 GB free: no released model fits; "
        "free memory or use a machine with more memory"
    )


def test_advice_suggests_4bit_and_batch_size_one_on_gpu():
    est = estimate_memory(
        "vandijklab/C2S-Scale-Gemma-2-2B",
        "bf16",
        8,
        2048,
        device="cuda",
        available_bytes=10 * 10**9,
    )
    assert not est.fits
    assert "you have 10.0 GB free: load it in 4bit (~8.0 GB); or use batch_size=1 (~6.9 GB)" in (
        est.advice
    )
    one = estimate_memory(
        "vandijklab/C2S-Scale-Gemma-2-2B", "bf16", 1, 2048, device="cuda", available_bytes=5 * 10**9
    )
    assert "you have 5.0 GB free: load it in 4bit (~3.6 GB)" in one.advice


def test_estimate_matches_loaded_tiny_models(tiny_gpt_neox_dir, tiny_gemma2_dir):
    for folder in (tiny_gpt_neox_dir, tiny_gemma2_dir):
        for precision in ("fp32", "bf16"):
            est = estimate_memory(str(folder), precision, 1, 64, device="cpu")
            model = load_model(str(folder), precision, "cpu").model
            assert est.weights_bytes == sum(
                p.numel() * p.element_size() for p in model.parameters()
            )
            assert est.name == folder.name


@no_cuda
def test_quantised_precision_on_cpu_is_estimated_as_the_fp32_fallback():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # estimating must not warn; only loading does
        est = estimate_memory(pythia_config(), "4bit", device="auto", available_bytes=10**12)
    assert (est.precision, est.device) == ("fp32", "cpu")
    with pytest.raises(DeviceUnavailableError, match="cannot measure free memory on cuda"):
        estimate_memory(pythia_config(), "4bit", device="cuda")


def test_resolve_target_rules():
    if not torch.cuda.is_available():
        assert resolve_target() == resolve_target("auto", "cpu")
        assert resolve_target().precision == "fp32" and resolve_target().notices == ()
        with pytest.raises(DeviceUnavailableError, match="PyTorch sees no CUDA GPU"):
            resolve_target("bf16", "cuda")
    else:
        assert resolve_target() == resolve_target("4bit", "cuda")
    with pytest.raises(DeviceUnavailableError, match='unknown precision "int4"'):
        resolve_target("int4")
    with pytest.raises(DeviceUnavailableError, match='unknown device "tpu"'):
        resolve_target("fp32", "tpu")


def test_estimate_survives_h5ad_round_trip(tmp_path):
    est = estimate_memory(pythia_config(), "fp32", device="cpu", available_bytes=10**12)
    adata = ad.AnnData(np.zeros((1, 1), dtype=np.float32))
    adata.uns["c2s"] = {"memory": est.to_dict()}
    adata.write_h5ad(tmp_path / "e.h5ad")
    back = ad.read_h5ad(tmp_path / "e.h5ad").uns["c2s"]["memory"]
    assert int(back["total_bytes"]) == est.total_bytes
    assert bool(back["fits"]) is True and back["advice"] == est.advice
