"""CPU defaults: the precision "auto" picks, and the attention kernel CPU models switch to."""

from __future__ import annotations

import pytest
import torch

from c2s_engine.errors import DeviceUnavailableError
from c2s_engine.models import attention as attention_module
from c2s_engine.models import load_model
from c2s_engine.models import memory as memory_module
from c2s_engine.models.attention import ATTENTION_NAME

pytest_plugins = ["tiny_checkpoints"]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choice")


def _with_flags(monkeypatch, native_bf16: bool) -> None:
    monkeypatch.delenv("C2S_CPU_PRECISION", raising=False)
    monkeypatch.setattr(memory_module, "cpu_has_native_bf16", lambda: native_bf16)


@no_cuda
@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, tiny_gpt_neox_dir, native, expected):
    _with_flags(monkeypatch, native)
    assert memory_module.resolve_target("auto", "cpu").precision == expected
    loaded = load_model(str(tiny_gpt_neox_dir))
    assert loaded.precision == expected
    dtype = torch.bfloat16 if expected == "bf16" else torch.float32
    assert {p.dtype for p in loaded.model.parameters()} == {dtype}


@no_cuda
def test_quantised_request_falls_back_to_the_cpu_precision_with_its_memory_factor(monkeypatch):
    _with_flags(monkeypatch, True)
    with pytest.warns(UserWarning, match="loaded in bf16 on the CPU instead: it needs about 4x"):
        target = memory_module.resolve_target("4bit", "cpu")
    assert target.precision == "bf16"
    with pytest.warns(UserWarning, match="loaded in bf16 on the CPU instead: it needs about 2x"):
        memory_module.resolve_target("8bit", "cpu")


def test_environment_overrides_and_is_checked(monkeypatch):
    monkeypatch.setattr(memory_module, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv("C2S_CPU_PRECISION", "FP32")
    assert memory_module.cpu_precision() == "fp32"
    monkeypatch.setenv("C2S_CPU_PRECISION", "int4")
    with pytest.raises(DeviceUnavailableError, match='C2S_CPU_PRECISION is "int4".*Fix: set it'):
        memory_module.cpu_precision()


def test_native_bf16_is_read_from_the_cpu_flags():
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        flags = next((line for line in fh if line.startswith("flags")), "").split()
    memory_module.cpu_has_native_bf16.cache_clear()
    assert memory_module.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("limit", [10**12, 0], ids=["matmul-branch", "sdpa-branch"])
def test_cpu_attention_matches_sdpa_with_left_padding(monkeypatch, tiny_gpt_neox_dir, limit):
    loaded = load_model(str(tiny_gpt_neox_dir), "fp32", "cpu")
    assert loaded.model.config._attn_implementation == ATTENTION_NAME
    monkeypatch.setattr(attention_module, "EAGER_SCORES_LIMIT_BYTES", limit)
    model = loaded.model
    torch.manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding, as batched prompts have
    mask[2, :1] = 0
    ours = _logits(model, ids, mask)
    model.set_attn_implementation("sdpa")
    try:
        reference = _logits(model, ids, mask)
    finally:
        model.set_attn_implementation(ATTENTION_NAME)
    real = mask.bool()
    torch.testing.assert_close(ours[real], reference[real], rtol=1e-4, atol=1e-4)
    # Without a padding mask (plain causal attention, SDPA's mask is None) it agrees as well.
    no_mask = _logits(model, ids[:1], None)
    torch.testing.assert_close(no_mask[0], reference[0], rtol=1e-4, atol=1e-4)


def test_cpu_attention_keeps_cached_decoding_exact(tiny_gpt_neox_dir, tiny_prompt):
    """Greedy decoding with the KV cache (one query over many keys) equals SDPA's."""
    loaded = load_model(str(tiny_gpt_neox_dir), "fp32", "cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = tokenizer([tiny_prompt], return_tensors="pt").input_ids
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        ours = model.generate(ids, **kwargs)
        model.set_attn_implementation("sdpa")
        reference = model.generate(ids, **kwargs)
        model.set_attn_implementation(ATTENTION_NAME)
    assert ours.tolist() == reference.tolist()


def test_gemma2_keeps_its_own_eager_attention(tiny_gemma2_dir):
    loaded = load_model(str(tiny_gemma2_dir), "fp32", "cpu")
    assert loaded.model.config._attn_implementation == "eager"  # soft-capping needs it
