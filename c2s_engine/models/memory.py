"""Device and precision choice, and how much memory a model will need before it is loaded.

Estimate = weights + KV cache + activations + workspace margin:

* **weights**: parameters are counted from the config alone (the model is built on the
  ``meta`` device, so no weights are read). ``fp32`` = 4 B/param, ``bf16`` = 2 B/param.
  With bitsandbytes, only plain ``nn.Linear`` layers are quantised, and transformers skips
  the output embedding (``lm_head``), tied weights, the last module and any
  ``_keep_in_fp32_modules``; we ask transformers for that exact list. Everything else
  (token embeddings, norms, biases, skipped layers) stays in bf16 (2 B/param).
  ``4bit`` (NF4, blocks of 64, double quantisation): 0.5 B/weight + 1 B per block for the
  8-bit absmax + 4 B per 256 blocks for the second-level fp32 absmax (~0.516 B/weight).
  ``8bit`` (LLM.int8): 1 B/weight + one fp32 scale per output row.
* **KV cache**: 2 (K and V) x layers x kv_heads x head_dim x context x batch x bytes, where
  bytes = 4 in fp32 and 2 otherwise (bf16 compute). This is an upper bound for Gemma-2, whose
  sliding-window layers keep at most 4096 positions.
* **activations** (prefill of the longest prompt, one layer alive at a time):
  batch x context x (4 x hidden + 3 x intermediate) x bytes, plus the attention score matrix
  batch x heads x context^2 x (4 + bytes) when the model uses eager attention (Gemma-2: SDPA
  cannot soft-cap logits, and the softmax runs in fp32), plus the last-position logits
  batch x vocab x 4 B.
* **workspace margin**: 10 % of the above for allocator fragmentation, plus 512 MiB on CUDA
  for cuBLAS workspaces and the caching allocator.

``auto`` precision is 4-bit on CUDA. On CPU it is bf16 where the processor has bf16 matrix
instructions (x86 AVX512-BF16 or AMX-BF16: half the memory and, on the benchmark model, ~1.5x
the speed of fp32) and fp32 elsewhere, since bf16 matmuls are slow without them; the variable
``C2S_CPU_PRECISION`` (``fp32`` or ``bf16``) overrides that choice. bitsandbytes quantisation
needs CUDA, so 4bit/8bit requests on CPU get the CPU precision instead, with a notice.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import psutil
import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.quantizers.base import HfQuantizer
from transformers.quantizers.quantizers_utils import should_convert_module

from c2s_engine.errors import DeviceUnavailableError
from c2s_engine.models.registry import get_card, list_models, read_config, registry_config

PRECISIONS: tuple[str, ...] = ("auto", "4bit", "8bit", "bf16", "fp32")
GB = 1e9
CUDA_WORKSPACE_BYTES = 512 * 2**20
MARGIN_FRACTION = 0.10
NF4_BLOCK = 64
NESTED_BLOCK = 256


@dataclass(frozen=True)
class Target:
    """Where and how a model will be loaded, after defaults and fallbacks.

    Attributes
    ----------
    device
        ``"cpu"``, ``"cuda"`` (all visible GPUs) or ``"cuda:N"``.
    precision
        One of ``"4bit"``, ``"8bit"``, ``"bf16"``, ``"fp32"``.
    notices
        User-visible sentences about fallbacks that were applied.
    """

    device: str
    precision: str
    notices: tuple[str, ...] = ()


def _check_names(precision: str, device: str) -> None:
    if precision not in PRECISIONS:
        raise DeviceUnavailableError(
            f'unknown precision "{precision}"', f"use one of: {', '.join(PRECISIONS)}"
        )
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise DeviceUnavailableError(
            f'unknown device "{device}"', 'use "auto", "cpu", "cuda" or "cuda:N"'
        )


def _default_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16, as Linux reports
    them in /proc/cpuinfo); False otherwise, including on systems without that file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_precision() -> str:
    """What ``auto`` precision means on CPU: ``$C2S_CPU_PRECISION`` if set, else bf16 with native
    bf16 instructions, else fp32.

    Raises
    ------
    DeviceUnavailableError
        ``C2S_CPU_PRECISION`` holds something other than ``fp32`` or ``bf16``.
    """
    chosen = os.environ.get("C2S_CPU_PRECISION", "").strip().lower()
    if chosen in ("fp32", "bf16"):
        return chosen
    if chosen:
        raise DeviceUnavailableError(
            f'C2S_CPU_PRECISION is "{chosen}", which is not a CPU precision',
            'set it to "fp32" or "bf16", or unset it to let the CPU decide',
        )
    return "bf16" if cpu_has_native_bf16() else "fp32"


def _effective_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "4bit" if device.startswith("cuda") else cpu_precision()
    if precision in ("4bit", "8bit") and device == "cpu":
        return cpu_precision()
    return precision


def resolve_target(precision: str = "auto", device: str = "auto") -> Target:
    """Turn ``precision``/``device`` requests into what this machine can do.

    ``auto`` device is CUDA when available, else CPU; ``auto`` precision is ``4bit`` on CUDA
    and :func:`cpu_precision` on CPU (bf16 with native bf16 instructions, else fp32). A
    ``4bit``/``8bit`` request without CUDA falls back to the CPU precision with a notice (also
    emitted as a ``UserWarning``).

    Raises
    ------
    DeviceUnavailableError
        Unknown precision or device, CUDA asked for but absent, or bitsandbytes missing.
    """
    _check_names(precision, device)
    device = _default_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f'device "{device}" was requested but PyTorch sees no CUDA GPU on this machine',
            'use device="cpu" (or "auto"), or install the CUDA build of PyTorch',
        )
    effective = _effective_precision(precision, device)
    notices: list[str] = []
    if precision in ("4bit", "8bit") and effective in ("fp32", "bf16"):
        factor = {"fp32": 4, "bf16": 2}[effective] * (2 if precision == "4bit" else 1)
        notice = (
            f"{precision} quantisation needs an NVIDIA GPU (bitsandbytes on CUDA) and none is "
            f"in use, so the model is loaded in {effective} on the CPU instead: it needs about "
            f"{factor}x the memory and runs slower"
        )
        warnings.warn(notice, UserWarning, stacklevel=2)
        notices.append(notice)
    if effective in ("4bit", "8bit"):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise DeviceUnavailableError(
                f"{effective} loading needs the bitsandbytes package, which is not installed",
                'pip install bitsandbytes, or choose precision="bf16"',
            ) from exc
    return Target(device=device, precision=effective, notices=tuple(notices))


def available_memory(device: str) -> int:
    """Free bytes on ``device``: all visible GPUs summed for ``"cuda"``, available RAM for CPU.

    Raises
    ------
    DeviceUnavailableError
        A CUDA device is named but PyTorch sees no CUDA GPU.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"cannot measure free memory on {device}: PyTorch sees no CUDA GPU on this machine",
            "pass available_bytes=... to estimate for another machine, or use the CPU",
        )
    if device == "cuda":
        return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return psutil.virtual_memory().available


@dataclass(frozen=True)
class _Layout:
    """Parameter layout of an architecture, as far as memory is concerned."""

    n_parameters: int
    quantisable: tuple[tuple[int, int, int], ...]  # (in_features, out_features, bias size)
    unquantised: int  # parameters bitsandbytes leaves in the compute dtype
    eager_attention: bool


def _layout(config: PretrainedConfig) -> _Layout:
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    # init_empty_weights re-creates parameters on meta, which undoes the embedding/lm_head tie.
    model.tie_weights()
    skip = HfQuantizer.get_modules_to_not_convert(model, None, model._keep_in_fp32_modules)
    quantisable, claimed = [], set()
    for name, module in model.named_modules():
        if type(module) is nn.Linear and should_convert_module(name, skip):
            bias = module.bias.numel() if module.bias is not None else 0
            quantisable.append((module.in_features, module.out_features, bias))
            claimed.update(id(p) for p in module.parameters())
    params = list(model.parameters())  # tied weights appear once
    return _Layout(
        n_parameters=sum(p.numel() for p in params),
        quantisable=tuple(quantisable),
        unquantised=sum(p.numel() for p in params if id(p) not in claimed),
        eager_attention=model.config._attn_implementation == "eager",
    )


@cache
def _registry_layout(name: str) -> _Layout:
    return _layout(registry_config(name))


def _weights_bytes(layout: _Layout, precision: str) -> int:
    if precision == "fp32":
        return 4 * layout.n_parameters
    if precision == "bf16":
        return 2 * layout.n_parameters
    total = 2 * layout.unquantised
    for n_in, n_out, bias in layout.quantisable:
        weights = n_in * n_out
        if precision == "4bit":
            blocks = math.ceil(weights / NF4_BLOCK)
            total += math.ceil(weights / 2) + blocks + 4 * math.ceil(blocks / NESTED_BLOCK)
        else:
            total += weights + 4 * n_out
        total += 2 * bias
    return total


def kv_cache_bytes(
    config: PretrainedConfig, precision: str, batch_size: int, context_length: int
) -> int:
    """Bytes of the key/value cache: 2 x layers x kv_heads x head_dim x context x batch x bytes."""
    layers, kv_heads, head_dim = _attention_shape(config)[:3]
    return 2 * layers * kv_heads * head_dim * context_length * batch_size * _act_bytes(precision)


def _attention_shape(config: PretrainedConfig) -> tuple[int, int, int, int]:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim, heads


def _act_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory a model needs on a device, against what is free there.

    All sizes are bytes. ``available_bytes`` is what was free when estimated; ``fits`` says
    whether ``total_bytes`` is within it; ``advice`` is one line for the user.
    """

    name: str
    precision: str
    device: str
    n_parameters: int
    batch_size: int
    context_length: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    total_bytes: int
    available_bytes: int
    fits: bool
    advice: str

    def to_dict(self) -> dict[str, str | int | bool]:
        """Plain dict (str/int/bool) that survives JSON and ``.h5ad`` round trips."""
        return asdict(self)


def estimate_memory(
    config_or_name: PretrainedConfig | str,
    precision: str = "auto",
    batch_size: int = 1,
    context_length: int | None = None,
    *,
    device: str = "auto",
    available_bytes: int | None = None,
    advise: bool = True,
) -> MemoryEstimate:
    """Estimate the memory needed to run a model, without loading its weights.

    Parameters
    ----------
    config_or_name
        A transformers config, a registered checkpoint id (estimated offline from the
        registry), a local model folder, or another Hugging Face id (its config is fetched).
    precision
        ``"auto"``, ``"4bit"``, ``"8bit"``, ``"bf16"`` or ``"fp32"`` (see :func:`resolve_target`;
        on ``"cpu"``, 4-bit/8-bit are estimated as the fp32 fallback the loader applies).
    batch_size, context_length
        Sequences run together and tokens per sequence (prompt + answer); the context defaults
        to the model card's context length, else the config's ``max_position_embeddings``.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; CUDA may be named on a machine
        without a GPU when ``available_bytes`` is given (estimating for another machine).
    available_bytes
        Free memory to compare with; measured on ``device`` when None.
    advise
        When False, skip suggesting alternatives (used internally to rank them).

    Returns
    -------
    MemoryEstimate
    """
    _check_names(precision, device)
    device = _default_device(device)
    precision = _effective_precision(precision, device)
    name, config, layout = _config_and_layout(config_or_name)
    card = get_card(name)
    if context_length is None:
        context_length = card.context_length if card else config.max_position_embeddings
    layers, _, _, heads = _attention_shape(config)
    act = _act_bytes(precision)
    weights = _weights_bytes(layout, precision)
    kv = kv_cache_bytes(config, precision, batch_size, context_length)
    intermediate = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    activations = batch_size * context_length * (4 * config.hidden_size + 3 * intermediate) * act
    if layout.eager_attention:  # Gemma-2; CPU models switch to SDPA for such long contexts
        activations += batch_size * heads * context_length**2 * (4 + act)
    activations += batch_size * config.vocab_size * 4
    overhead = int(MARGIN_FRACTION * (weights + kv + activations))
    if device.startswith("cuda"):
        overhead += CUDA_WORKSPACE_BYTES
    total = weights + kv + activations + overhead
    if available_bytes is None:
        available_bytes = available_memory(device)
    estimate = MemoryEstimate(
        name=name,
        precision=precision,
        device=device,
        n_parameters=layout.n_parameters,
        batch_size=batch_size,
        context_length=context_length,
        weights_bytes=weights,
        kv_cache_bytes=kv,
        activation_bytes=activations,
        overhead_bytes=overhead,
        total_bytes=total,
        available_bytes=available_bytes,
        fits=total <= available_bytes,
        advice="",
    )
    return _with_advice(estimate) if advise else estimate


def _config_and_layout(
    config_or_name: PretrainedConfig | str,
) -> tuple[str, PretrainedConfig, _Layout]:
    if isinstance(config_or_name, PretrainedConfig):
        name = config_or_name.name_or_path or config_or_name.model_type
        return name, config_or_name, _layout(config_or_name)
    if get_card(config_or_name) is not None:
        return config_or_name, registry_config(config_or_name), _registry_layout(config_or_name)
    config, _ = read_config(config_or_name)
    name = Path(config_or_name).name if Path(config_or_name).is_dir() else config_or_name
    return name, config, _layout(config)


def _gb(n_bytes: int) -> str:
    return f"{n_bytes / GB:.1f} GB"


def _with_advice(est: MemoryEstimate) -> MemoryEstimate:
    size = f"{est.n_parameters / 1e9:.1f}B" if est.n_parameters >= 1e8 else f"{est.n_parameters:,}"
    need = (
        f"{est.name} ({size} parameters) needs ~{_gb(est.total_bytes)} in {est.precision} on "
        f"{est.device} (weights {_gb(est.weights_bytes)}, KV cache {_gb(est.kv_cache_bytes)} "
        f"and activations {_gb(est.activation_bytes)} for {est.batch_size} x "
        f"{est.context_length} tokens, margin {_gb(est.overhead_bytes)})"
    )
    if est.fits:
        advice = f"{need}; {_gb(est.available_bytes)} free: it fits"
    else:
        options = _alternatives(est)
        advice = f"{need}; you have {_gb(est.available_bytes)} free: " + (
            "; or ".join(options)
            if options
            else "no released model fits; free memory or use a machine with more memory"
        )
    return MemoryEstimate(**{**asdict(est), "advice": advice})


def _alternatives(est: MemoryEstimate) -> list[str]:
    """Cheaper ways to run something similar, each checked against the same free memory."""
    options = []

    def fits(name: str, **changes: object) -> MemoryEstimate | None:
        kwargs = {
            "precision": est.precision,
            "batch_size": est.batch_size,
            "context_length": est.context_length,
            "device": est.device,
            "available_bytes": est.available_bytes,
            "advise": False,
            **changes,
        }
        option = estimate_memory(name, **kwargs)
        return option if option.fits else None

    registered = get_card(est.name) is not None
    if est.device.startswith("cuda") and est.precision != "4bit" and registered:
        option = fits(est.name, precision="4bit")
        if option:
            options.append(f"load it in 4bit (~{_gb(option.total_bytes)})")
    if est.batch_size > 1 and registered:
        option = fits(est.name, batch_size=1)
        if option:
            options.append(f"use batch_size=1 (~{_gb(option.total_bytes)})")
    smaller = [
        card.name
        for card in reversed(list_models())
        if card.n_parameters < est.n_parameters and card.context_length >= est.context_length
    ]
    for name in smaller:
        option = fits(name)
        if option:
            options.append(f"use {name} (~{_gb(option.total_bytes)})")
            break
    if est.device.startswith("cuda") and registered:
        ram = available_memory("cpu")
        option = estimate_memory(
            est.name,
            "fp32",
            est.batch_size,
            est.context_length,
            device="cpu",
            available_bytes=ram,
            advise=False,
        )
        if option.fits:
            options.append(
                f'use device="cpu" (~{_gb(option.total_bytes)} of {_gb(ram)} free RAM, slower)'
            )
    return options
