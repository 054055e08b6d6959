"""Attention kernel for CPU inference: plain matmuls for small shapes, SDPA for large ones.

On CPU, PyTorch's fused ``scaled_dot_product_attention`` costs more than two matmuls and a
softmax when the score matrix is small, which is every decoding step and most C2S prompts
(measured on the 20M-parameter benchmark model in bf16: generation 23 -> 31 cells/s, see
``benchmarks/results/inference_cpu.json``). For long multi-cell prompts (thousands of tokens)
the materialised score matrix would take gigabytes, and SDPA's blocked kernel is the right
one. :data:`ATTENTION_NAME` is registered with transformers' attention interface and picks
per call, from the shape of that call's scores, so it is safe to share one loaded model
between threads.

Only models that would otherwise use SDPA get it (GPT-NeoX/Pythia); Gemma-2 keeps its own
eager attention, which soft-caps the logits (SDPA cannot).
"""

from __future__ import annotations

import sys

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

ATTENTION_NAME = "c2s_cpu"
# Largest score matrix (bytes, in the compute dtype plus the fp32 softmax) handled by matmuls.
EAGER_SCORES_LIMIT_BYTES = 256 * 2**20


def _additive_mask(
    mask: torch.Tensor | None, q_len: int, k_len: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The additive float mask eager attention expects, from SDPA's boolean mask or ``None``
    (``None`` means plain causal attention: query ``i`` sees keys up to ``k_len - q_len + i``)."""
    if mask is None:
        keys = torch.arange(k_len, device=device)
        queries = torch.arange(q_len, device=device) + (k_len - q_len)
        mask = keys[None, :] <= queries[:, None]
        mask = mask[None, None]
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(
        ~mask, torch.finfo(dtype).min
    )


def cpu_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eager attention of the model's own module when the scores are small, else SDPA."""
    batch, heads, q_len, _ = query.shape
    k_len = key.shape[-2]
    score_bytes = batch * heads * q_len * k_len * (query.element_size() + 4)
    if score_bytes > EAGER_SCORES_LIMIT_BYTES:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # Each transformers model file defines the eager attention its architecture expects.
    eager = sys.modules[type(module).__module__].eager_attention_forward
    mask = _additive_mask(attention_mask, q_len, k_len, query.dtype, query.device)
    kwargs.setdefault("scaling", query.shape[-1] ** -0.5)
    kwargs.pop("is_causal", None)
    return eager(module, query, key, value, mask, **kwargs)


AttentionInterface.register(ATTENTION_NAME, cpu_attention_forward)
# The masks are built as for SDPA (boolean, or None when plain causal attention suffices).
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def use_cpu_attention(model: torch.nn.Module) -> bool:
    """Switch a CPU model that uses SDPA to :func:`cpu_attention_forward`; True if switched."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(ATTENTION_NAME)
    return model.config._attn_implementation == ATTENTION_NAME
