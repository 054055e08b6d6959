"""Load a C2S checkpoint safely: resolve the name, check the weights, estimate memory, load.

Safety rules: weights are only read from safetensors files (``use_safetensors=True``), never
from pickles, and checkpoint code is never run (``trust_remote_code=False``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import cached_file

from c2s_engine.errors import (
    DemoModelMissingError,
    InsufficientMemoryError,
    ModelCardError,
    ModelNotFoundError,
    UnsafeWeightsError,
    UnsupportedArchitectureError,
)
from c2s_engine.models.attention import use_cpu_attention
from c2s_engine.models.card import CARD_FILENAME, ModelCard
from c2s_engine.models.memory import estimate_memory, resolve_target
from c2s_engine.models.registry import get_card, read_card_file, read_config

DEMO_NAME = "demo"
DEMO_ENV_VAR = "C2S_DEMO_MODEL"
MODELS_DIR = Path(__file__).resolve().parents[2] / "assets" / "models"
#: Tokens per sequence used for the memory check in :func:`load_model` when none is given:
#: a 200-gene cell sentence plus its prompt is well under 2048 tokens for every released
#: tokenizer. Capped by the model's own context length.
DEFAULT_CHECK_CONTEXT = 2048
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# dtype of the weights bitsandbytes leaves unquantised (embeddings, norms, lm_head).
_DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "4bit": torch.bfloat16,
    "8bit": torch.bfloat16,
}


@dataclass
class LoadedModel:
    """A model ready for inference, with what the user should know about how it was loaded.

    Attributes
    ----------
    model, tokenizer
        The transformers model (in eval mode) and its tokenizer.
    name
        Hugging Face id, ``"demo"``, or the folder name of a local model.
    revision
        Commit hash for Hugging Face ids; ``"local:<sha256>"`` of the safetensors files for
        folders.
    precision
        Precision actually used (``"4bit"``, ``"8bit"``, ``"bf16"`` or ``"fp32"``).
    device
        Device(s) holding the weights, comma-separated when spread over several GPUs.
    card
        What the model was trained for (``c2s.json`` or the registry).
    notices
        User-visible notices (fallbacks, missing card, ...).
    dtype
        torch dtype of the non-quantised weights.
    n_parameters
        Parameter count from the config (tied weights counted once).
    memory_bytes
        Bytes held by the loaded parameters and buffers.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    revision: str
    precision: str
    device: str
    card: ModelCard
    notices: list[str] = field(default_factory=list)
    dtype: torch.dtype = torch.float32
    n_parameters: int = 0
    memory_bytes: int = 0

    def info(self) -> dict[str, Any]:
        """Plain description (str/int/lists) of how the model was loaded, safe for ``.h5ad``."""
        return {
            "name": self.name,
            "revision": self.revision,
            "precision": self.precision,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "n_parameters": self.n_parameters,
            "memory_bytes": self.memory_bytes,
            "notices": list(self.notices),
            "card": self.card.to_dict(),
        }


def bundled_names() -> list[str]:
    """Names of the models shipped under ``assets/models`` (``"demo"`` and the folder names:
    the folders holding a ``c2s.json``); a directory listing, no card is read."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(f.name for f in MODELS_DIR.iterdir() if (f / CARD_FILENAME).is_file())


def bundled_models() -> dict[str, ModelCard]:
    """The shipped models (:func:`bundled_names`) with their cards; a folder whose card
    cannot be read is left out."""
    found: dict[str, ModelCard] = {}
    for name in bundled_names():
        try:
            found[name] = read_card_file(MODELS_DIR / name / CARD_FILENAME)
        except ModelCardError:
            continue  # a broken card only stops that folder from being offered
    return found


@dataclass(frozen=True)
class _Source:
    name: str  # what the user will see
    location: str  # folder path or Hugging Face id
    local: bool


def resolve_source(name_or_path: str) -> _Source:
    """Map ``"demo"``, a folder, a bundled model's name (:func:`bundled_models`) or a Hugging
    Face id to where the checkpoint is.

    Raises
    ------
    DemoModelMissingError
        ``"demo"`` was asked for but is not installed (and ``C2S_DEMO_MODEL`` is unset).
    ModelNotFoundError
        A path-like name that does not exist, or a file instead of a folder.
    """
    if name_or_path == DEMO_NAME:
        override = os.environ.get(DEMO_ENV_VAR)
        folder = Path(override).expanduser() if override else MODELS_DIR / DEMO_NAME
        if not folder.is_dir():
            where = f"{DEMO_ENV_VAR}={override}" if override else str(folder)
            raise DemoModelMissingError(
                f"the demo model is not installed (nothing at {where})",
                f"put a saved model folder (config.json, *.safetensors, tokenizer, {CARD_FILENAME}) "
                f"at {MODELS_DIR / DEMO_NAME}, or set {DEMO_ENV_VAR} to such a folder, or load a "
                "released model such as vandijklab/C2S-Pythia-410m-cell-type-prediction",
            )
        return _Source(DEMO_NAME, str(folder), local=True)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _Source(path.resolve().name, str(path), local=True)
    shipped = MODELS_DIR / name_or_path
    if "/" not in name_or_path and (shipped / CARD_FILENAME).is_file():
        return _Source(name_or_path, str(shipped), local=True)  # e.g. "kang-perturbation"
    if path.exists():
        raise ModelNotFoundError(
            f"{path} is a file, but a model is a folder",
            "pass the folder that holds config.json and the *.safetensors weights",
        )
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise ModelNotFoundError(
            f'the model folder "{name_or_path}" does not exist and is not a Hugging Face id',
            "check the path, or use an id of the form owner/name "
            "(e.g. vandijklab/C2S-Pythia-410m-cell-type-prediction)",
        )
    return _Source(name_or_path, name_or_path, local=False)


def check_weights_are_safe(folder: Path) -> list[Path]:
    """Return the safetensors files of ``folder``; refuse folders holding only pickled weights.

    Pickled files next to safetensors (``rng_state.pth``, ``optimizer.pt`` in training
    folders) are ignored because they are never opened.

    Raises
    ------
    UnsafeWeightsError
        Only pickle files (.bin/.pt/.pth/...) hold weights.
    ModelNotFoundError
        No weight file at all.
    """
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return safetensors
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeWeightsError(
            f"{folder} only has pickled weights ({', '.join(pickles)}); loading a pickle can run "
            "arbitrary code, so C2S Studio refuses it",
            "convert it once in a trusted Python session: "
            "model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=False); "
            "model.save_pretrained(folder, safe_serialization=True), or download the "
            "safetensors version of the checkpoint",
        )
    raise ModelNotFoundError(
        f"{folder} holds no model weights (no *.safetensors file)",
        "point at the folder written by save_pretrained, which holds model.safetensors",
    )


def local_revision(safetensors: list[Path]) -> str:
    """``"local:<sha256>"`` over the names and bytes of the safetensors files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(safetensors, key=lambda p: p.name):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return f"local:{digest.hexdigest()}"


def load_model(
    name_or_path: str,
    precision: str = "auto",
    device: str = "auto",
    *,
    revision: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    batch_size: int = 1,
    context_length: int | None = None,
) -> LoadedModel:
    """Load a C2S checkpoint for inference.

    Parameters
    ----------
    name_or_path
        ``"demo"`` (``assets/models/demo`` or the folder in ``$C2S_DEMO_MODEL``), a local folder
        written by ``save_pretrained``, or a Hugging Face id (downloaded or read from the cache).
    precision
        ``"auto"`` (4bit on CUDA; on CPU bf16 where the processor has native bf16 instructions,
        else fp32, see :func:`c2s_engine.models.memory.cpu_precision`), ``"4bit"`` (NF4, double
        quantisation, bf16 compute), ``"8bit"``, ``"bf16"`` or ``"fp32"``. Without CUDA,
        4bit/8bit fall back to the CPU precision with a notice. On CPU, models that use SDPA
        attention get :mod:`c2s_engine.models.attention` (matmuls for small score matrices).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` (spread over all GPUs) or ``"cuda:N"``.
    revision
        Branch, tag or commit of a Hugging Face id.
    device_map
        Passed to transformers on CUDA (ignored on CPU); defaults to ``"auto"`` on ``"cuda"``
        so big models spread over the GPUs, and to the one GPU for ``"cuda:N"``.
    batch_size, context_length
        Workload used for the memory check done before loading (context defaults to
        :data:`DEFAULT_CHECK_CONTEXT` tokens, capped by the model's context length).

    Returns
    -------
    LoadedModel

    Raises
    ------
    DemoModelMissingError, ModelNotFoundError, UnsafeWeightsError, UnsupportedArchitectureError,
    DeviceUnavailableError, InsufficientMemoryError, ModelCardError
    """
    source = resolve_source(name_or_path)
    safetensors = check_weights_are_safe(Path(source.location)) if source.local else []
    config, commit = read_config(source.location, revision)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UnsupportedArchitectureError(
            f"{source.name} is a {config.model_type} model, which is not a causal language model "
            "transformers can generate text with",
            "use a C2S checkpoint (GPT-NeoX/Pythia or Gemma-2 based) or another causal LM",
        )
    notices: list[str] = []
    card = _card(source, config, revision=commit or revision, notices=notices)
    target = resolve_target(precision, device)
    notices[:0] = target.notices
    if context_length is None:
        context_length = min(DEFAULT_CHECK_CONTEXT, card.context_length)
    config.name_or_path = source.name  # how the memory advice names the model
    estimate = estimate_memory(
        config, target.precision, batch_size, context_length, device=target.device
    )
    if not estimate.fits:
        raise InsufficientMemoryError(
            estimate.advice, "close programs that use this memory, or take one of the options named"
        )
    if source.local or card.n_parameters == 0:
        # What the weights are is a fact of the checkpoint, whatever a card inherited.
        card = replace(card, architecture=_architecture(config), n_parameters=estimate.n_parameters)
    # The tokenizer first: a missing one fails in a second instead of after the weights load.
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.location, revision=commit or None, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"{source.name} has no usable tokenizer ({str(exc).splitlines()[0]})",
            "save the tokenizer next to the weights (tokenizer.save_pretrained(folder))",
        ) from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.location,
            revision=commit or None,
            trust_remote_code=False,
            use_safetensors=True,
            dtype=_DTYPES[target.precision],
            **_placement(target.precision, target.device, device_map),
        )
    except OSError as exc:  # e.g. a Hub repository that only ships pickled weights
        raise ModelNotFoundError(
            f"the safetensors weights of {source.name} could not be loaded "
            f"({str(exc).splitlines()[0]})",
            "use a checkpoint that ships *.safetensors weights (pickled .bin files are refused)",
        ) from exc
    model.eval()
    if target.device == "cpu":
        use_cpu_attention(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=source.name,
        revision=local_revision(safetensors) if source.local else commit or revision or "",
        precision=target.precision,
        device=",".join(sorted({str(p.device) for p in model.parameters()})),
        card=card,
        notices=notices,
        dtype=_DTYPES[target.precision],
        n_parameters=estimate.n_parameters,
        memory_bytes=model.get_memory_footprint(),
    )


def _placement(precision: str, device: str, device_map: str | dict | None) -> dict[str, Any]:
    """from_pretrained arguments that put the weights on ``device`` in ``precision``."""
    kwargs: dict[str, Any] = {}
    if device == "cpu":
        return kwargs
    kwargs["device_map"] = device_map or ("auto" if device == "cuda" else {"": device})
    if precision == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    elif precision == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    return kwargs


def _card(
    source: _Source, config: PretrainedConfig, *, revision: str | None, notices: list[str]
) -> ModelCard:
    """The model card: c2s.json wins for folders; the registry wins for Hugging Face ids."""
    if not source.local and (registered := get_card(source.location)) is not None:
        return registered
    defaults = ModelCard(
        name=source.name,
        architecture=_architecture(config),
        n_parameters=0,
        tasks=(),
        top_k=200,
        organisms=("Homo sapiens", "Mus musculus"),
        context_length=config.max_position_embeddings,
        prompt_family="c2s",
    )
    card_path = (
        Path(source.location) / CARD_FILENAME
        if source.local
        else cached_file(
            source.location,
            CARD_FILENAME,
            revision=revision,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    )
    if card_path is not None and Path(card_path).is_file():
        return read_card_file(Path(card_path), defaults)
    notices.append(
        f"{source.name} has no {CARD_FILENAME} model card and is not a registered checkpoint, "
        "so the tasks it was trained for are unknown; add a c2s.json next to its weights"
    )
    return defaults


def _architecture(config: PretrainedConfig) -> str:
    return (config.architectures or [MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].__name__])[0]
