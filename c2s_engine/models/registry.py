"""Registry of the released C2S checkpoints, model-card lookup and config reading.

Each released checkpoint carries its card (tasks, genes per sentence, context length, ...)
and the size hyperparameters of its config, so memory can be estimated before anything is
downloaded. Sources: the Hugging Face model cards of each id and the base configs
(EleutherAI/pythia-410m, EleutherAI/pythia-1b, google/gemma-2-2b, google/gemma-2-27b).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download, is_offline_mode
from huggingface_hub.errors import EntryNotFoundError, HFValidationError
from transformers import AutoConfig, PretrainedConfig

from c2s_engine.errors import ModelCardError, ModelNotFoundError, UnsupportedArchitectureError
from c2s_engine.models.card import CARD_FILENAME, ModelCard

_GEMMA_TASKS = (
    "cell_language_modeling",
    "gene_set_enumeration",
    "gene_set_naming",
    "cell_type_prediction",
    "cell_type_generation",
    "multi_cell_language_modeling",
    "sample_cell_types_prediction",
    "tissue_conditioned_sample_generation",
    "cell_types_conditioned_sample_generation",
    "abstract_conditioned_sample_generation",
    "tissue_prediction",
    "natural_language_interpretation",
    "cluster_captioning",
    "question_answering",
    "embedding",
)
# The multi-task Pythia checkpoints were trained on the single- and multi-cell tasks and
# dataset abstracts; QA, captioning, perturbation and spatial tasks need fine-tuning first.
_PYTHIA_MULTI_TASKS = (
    "cell_type_prediction",
    "cell_type_generation",
    "multi_cell_language_modeling",
    "sample_cell_types_prediction",
    "tissue_conditioned_sample_generation",
    "cell_types_conditioned_sample_generation",
    "abstract_conditioned_sample_generation",
    "tissue_prediction",
    "natural_language_interpretation",
    "embedding",
)
_PYTHIA_410M = {
    "vocab_size": 50304,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "tie_word_embeddings": False,
}
_GEMMA_2B = {
    "vocab_size": 256000,
    "hidden_size": 2304,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "intermediate_size": 9216,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "tie_word_embeddings": True,
}

def _released(name: str, architecture: str, n_parameters: int, tasks: tuple[str, ...], *,
              context_length: int, license: str, description: str) -> ModelCard:
    """The card of a released checkpoint: all rank the top 200 genes of human or mouse cells
    and use the C2S prompt family."""
    return ModelCard(name=name, architecture=architecture, n_parameters=n_parameters,
                     tasks=tasks, top_k=200, organisms=("Homo sapiens", "Mus musculus"),
                     context_length=context_length, prompt_family="c2s", license=license,
                     description=description)


# name -> (card, (model_type, config kwargs)). Context lengths: 8192 where the model card says
# the RoPE context was extended before C2S training (and for Gemma-2); 2048 (Pythia's
# max_position_embeddings) for the two single-task Pythia-410M models.
_ENTRIES: dict[str, tuple[ModelCard, tuple[str, dict[str, Any]]]] = {
    "vandijklab/C2S-Scale-Gemma-2-2B": (
        _released(
            "vandijklab/C2S-Scale-Gemma-2-2B",
            "Gemma2ForCausalLM", 2_614_341_888, _GEMMA_TASKS,
            context_length=8192, license="CC-BY-4.0",
            description="C2S-Scale multi-task foundation model on Gemma-2 2B."),
        ("gemma2", {**_GEMMA_2B, "max_position_embeddings": 8192}),
    ),
    "vandijklab/C2S-Scale-Gemma-2-27B": (
        _released(
            "vandijklab/C2S-Scale-Gemma-2-27B",
            "Gemma2ForCausalLM", 27_227_128_320, _GEMMA_TASKS,
            context_length=8192, license="CC-BY-4.0",
            description="Largest C2S-Scale model (Gemma-2 27B); 4-bit fits one workstation "
                        "GPU."),
        (
            "gemma2",
            {
                "vocab_size": 256000,
                "hidden_size": 4608,
                "num_hidden_layers": 46,
                "num_attention_heads": 32,
                "num_key_value_heads": 16,
                "head_dim": 128,
                "intermediate_size": 36864,
                "query_pre_attn_scalar": 144,
                "sliding_window": 4096,
                "max_position_embeddings": 8192,
                "tie_word_embeddings": True,
            },
        ),
    ),
    "vandijklab/C2S-Scale-Pythia-1b-pt": (
        _released(
            "vandijklab/C2S-Scale-Pythia-1b-pt",
            "GPTNeoXForCausalLM", 1_011_781_632, _PYTHIA_MULTI_TASKS,
            context_length=8192, license="CC-BY-NC-ND-4.0",
            description="C2S-Scale 1B multi-task pretrained model on Pythia-1b."),
        (
            "gpt_neox",
            {
                "vocab_size": 50304,
                "hidden_size": 2048,
                "num_hidden_layers": 16,
                "num_attention_heads": 8,
                "intermediate_size": 8192,
                "max_position_embeddings": 8192,
                "tie_word_embeddings": False,
            },
        ),
    ),
    "vandijklab/C2S-Pythia-410m-cell-type-prediction": (
        _released(
            "vandijklab/C2S-Pythia-410m-cell-type-prediction",
            "GPTNeoXForCausalLM", 405_334_016, ("cell_type_prediction", "embedding"),
            context_length=2048, license="CC-BY-NC-ND-4.0",
            description="Cell type prediction from the top 200 genes (Pythia-410M)."),
        ("gpt_neox", {**_PYTHIA_410M, "max_position_embeddings": 2048}),
    ),
    "vandijklab/C2S-Pythia-410m-cell-type-conditioned-cell-generation": (
        _released(
            "vandijklab/C2S-Pythia-410m-cell-type-conditioned-cell-generation",
            "GPTNeoXForCausalLM", 405_334_016, ("cell_type_generation",),
            context_length=2048, license="CC-BY-NC-ND-4.0",
            description="Generates 200-gene cell sentences for a given cell type "
                        "(Pythia-410M)."),
        ("gpt_neox", {**_PYTHIA_410M, "max_position_embeddings": 2048}),
    ),
    "vandijklab/C2S-Pythia-410m-diverse-single-and-multi-cell-tasks": (
        _released(
            "vandijklab/C2S-Pythia-410m-diverse-single-and-multi-cell-tasks",
            "GPTNeoXForCausalLM", 405_334_016, _PYTHIA_MULTI_TASKS,
            context_length=8192, license="CC-BY-NC-ND-4.0",
            description="Single- and multi-cell tasks incl. dataset abstracts "
                        "(Pythia-410M)."),
        ("gpt_neox", {**_PYTHIA_410M, "max_position_embeddings": 8192}),
    ),
}


def list_models() -> list[ModelCard]:
    """Cards of all released checkpoints, smallest first."""
    return sorted((card for card, _ in _ENTRIES.values()), key=lambda c: (c.n_parameters, c.name))


def get_card(name: str) -> ModelCard | None:
    """Registry card for a released Hugging Face id, or None when the id is not registered."""
    entry = _ENTRIES.get(name)
    return entry[0] if entry else None


def registry_config(name: str) -> PretrainedConfig:
    """Config of a released checkpoint built offline from the registry (no download).

    Raises
    ------
    ModelNotFoundError
        ``name`` is not a registered checkpoint.
    """
    entry = _ENTRIES.get(name)
    if entry is None:
        raise ModelNotFoundError(
            f'"{name}" is not a registered C2S checkpoint',
            f"use one of: {', '.join(_ENTRIES)}",
        )
    model_type, kwargs = entry[1]
    config = AutoConfig.for_model(model_type, **kwargs)
    config.architectures = [entry[0].architecture]
    config.name_or_path = name
    return config


def read_card_file(path: Path, defaults: ModelCard | None = None) -> ModelCard:
    """Read a ``c2s.json`` card on top of its ``"base"`` registry entry or of ``defaults``.

    With a ``"base"``, the card's name still defaults to ``defaults.name`` (the local folder),
    because a fine-tuned copy is not the released checkpoint.

    Raises
    ------
    ModelCardError
        The file is not valid JSON, not an object, names an unknown base, or holds bad fields.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCardError(
            f"the model card {path} cannot be read ({exc})",
            f"fix the JSON in {CARD_FILENAME} or delete it to use the defaults",
        ) from exc
    if not isinstance(data, dict):
        raise ModelCardError(f"the model card {path} is not a JSON object", None)
    if "base" in data:
        base = get_card(str(data["base"]))
        if base is None:
            raise ModelCardError(
                f'the model card {path} names an unknown base "{data["base"]}"',
                f"use one of: {', '.join(_ENTRIES)}",
            )
        defaults = replace(base, name=defaults.name) if defaults is not None else base
    return ModelCard.from_dict(data, defaults, source=str(path))


def read_config(name_or_path: str, revision: str | None = None) -> tuple[PretrainedConfig, str]:
    """Read the transformers config of a local folder or Hugging Face id.

    Parameters
    ----------
    name_or_path
        A folder holding ``config.json`` or a Hugging Face id (read through the local cache,
        so it also works offline once downloaded).
    revision
        Branch, tag or commit of a Hugging Face id; ignored for folders.

    Returns
    -------
    The config and, for Hugging Face ids, the resolved commit hash ('' for folders).

    Raises
    ------
    ModelNotFoundError
        No ``config.json`` in the folder, or the id cannot be found or downloaded.
    UnsupportedArchitectureError
        transformers does not know the model type (or it needs remote code, which we refuse).
    """
    folder = Path(name_or_path).expanduser()
    commit = ""
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(
                f"the folder {folder} has no config.json, so it is not a saved transformers model",
                "point at the folder written by save_pretrained (it holds config.json and "
                "*.safetensors)",
            )
        source = str(folder)
    else:
        commit = _download_config(name_or_path, revision)
        source = name_or_path
    try:
        config = AutoConfig.from_pretrained(
            source, revision=commit or None, trust_remote_code=False
        )
    except (ValueError, KeyError) as exc:
        raise UnsupportedArchitectureError(
            f"{name_or_path} has an architecture transformers cannot build without running the "
            f"checkpoint's own code ({str(exc).splitlines()[0]})",
            "use a checkpoint whose config.json has a model_type known to transformers, "
            "e.g. gpt_neox or gemma2",
        ) from exc
    return config, commit


def _download_config(repo_id: str, revision: str | None) -> str:
    """Fetch (or find in the cache) config.json of a Hub id and return its commit hash."""
    try:
        path = Path(hf_hub_download(repo_id, "config.json", revision=revision))
    except HFValidationError as exc:
        raise ModelNotFoundError(
            f'"{repo_id}" is neither an existing folder nor a Hugging Face id (owner/name)',
            "check the path, or use an id such as vandijklab/C2S-Pythia-410m-cell-type-prediction",
        ) from exc
    except (EntryNotFoundError, OSError) as exc:
        if is_offline_mode():
            raise ModelNotFoundError(
                f"{repo_id} is not in the local Hugging Face cache and offline mode is on "
                "(HF_HUB_OFFLINE=1)",
                f"download it once on a connected machine (huggingface-cli download {repo_id}) "
                "and copy the cache, or pass the folder of a saved copy",
            ) from exc
        raise ModelNotFoundError(
            f"{repo_id} could not be fetched from Hugging Face ({str(exc).splitlines()[0]})",
            "check the id and your network, or pass the folder of a saved copy",
        ) from exc
    # Cached files live under .../snapshots/<commit>/config.json.
    return path.parent.name if path.parent.parent.name == "snapshots" else (revision or "")
