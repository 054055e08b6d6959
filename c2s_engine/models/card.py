"""Model cards: what a checkpoint was trained for, in the fields the engine needs.

A card comes from the registry of released checkpoints or from a ``c2s.json`` file next to a
model's weights. ``c2s.json`` holds the same keys as :meth:`ModelCard.to_dict`; it may name a
registry entry under ``"base"`` and then only needs the fields that differ from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from c2s_engine.errors import ModelCardError
from c2s_engine.prompts import Registry

CARD_FILENAME = "c2s.json"

#: Task ids understood by the engine: the prompt-registry task ids (one YAML template each),
#: ``embedding`` (no prompt), and ``spatial_*`` for every spatial task at once.
TASKS: tuple[str, ...] = (*Registry(use_env=False).list_tasks(), "embedding", "spatial_*")

ORGANISMS: tuple[str, ...] = ("Homo sapiens", "Mus musculus")


def _is_known_task(task: str) -> bool:
    return any(fnmatchcase(task, pattern) for pattern in TASKS)


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint is and what it can be asked.

    Attributes
    ----------
    name
        Hugging Face id for released checkpoints, folder name for local models.
    architecture
        transformers class name, e.g. ``"Gemma2ForCausalLM"``.
    n_parameters
        Parameter count (tied weights counted once); 0 when not yet counted.
    tasks
        Task ids from :data:`TASKS` the model was trained for; may hold ``"spatial_*"``.
    top_k
        Number of genes per cell sentence the model expects by default.
    organisms
        Organism words the model saw in its prompts.
    context_length
        Longest prompt plus answer, in tokens, the model was trained on.
    prompt_family
        Name of the prompt-template family matching the model's training wording.
    license, description
        Free text shown to users.
    training
        How the checkpoint was made, for models trained with ``c2s train``: the command,
        data source, the exact split (held-out cell names or held-out values) and held-out
        metrics, so anyone can re-score it; ``decoding`` may map a task to the decoding
        settings recommended for it (:meth:`decoding`). Empty for released checkpoints.
    """

    name: str
    architecture: str
    n_parameters: int
    tasks: tuple[str, ...]
    top_k: int
    organisms: tuple[str, ...]
    context_length: int
    prompt_family: str
    license: str = ""
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)

    def supports(self, task: str) -> bool:
        """Whether the model was trained for ``task`` (``spatial_*`` covers every spatial task)."""
        return any(fnmatchcase(task, pattern) for pattern in self.tasks)

    def decoding(self, task: str) -> dict[str, Any]:
        """Decoding settings the card recommends for ``task`` (``training.decoding[task]``,
        e.g. ``{"temperature": 0.6, "contrast_weight": 1.0}``, chosen on validation cells);
        empty when it names none."""
        found = self.training.get("decoding", {})
        return dict(found.get(task, {})) if isinstance(found, dict) else {}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (str/int/lists only) that survives JSON and ``.h5ad`` round trips."""
        data = dataclasses.asdict(self)
        data["tasks"] = list(self.tasks)
        data["organisms"] = list(self.organisms)
        return data

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], defaults: ModelCard | None = None, source: str = "card"
    ) -> ModelCard:
        """Build a card from ``data``, filling missing fields from ``defaults``.

        Raises
        ------
        ModelCardError
            Unknown keys, unknown task ids, wrong types, or missing required fields.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - {"base"})
        if unknown:
            raise ModelCardError(
                f"{source} has unknown keys {unknown}",
                f"use only these keys: {', '.join(sorted(fields | {'base'}))}",
            )
        values = dataclasses.asdict(defaults) if defaults is not None else {}
        values.update({k: v for k, v in data.items() if k != "base"})
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(values))
        if missing:
            raise ModelCardError(
                f"{source} lacks the fields {missing}",
                'add them, or name a registry checkpoint under "base" to inherit its fields',
            )
        if isinstance(values["organisms"], str):
            values["organisms"] = [values["organisms"]]
        for key in ("tasks", "organisms"):
            if not isinstance(values[key], list | tuple) or not all(
                isinstance(item, str) for item in values[key]
            ):
                raise ModelCardError(f'{source}: "{key}" must be a list of strings', None)
            values[key] = tuple(values[key])
        bad_tasks = [task for task in values["tasks"] if not _is_known_task(task)]
        if bad_tasks:
            raise ModelCardError(
                f"{source} lists unknown tasks {bad_tasks}",
                f"use task ids among: {', '.join(TASKS)}",
            )
        if not isinstance(values.get("training", {}), dict):
            raise ModelCardError(f'{source}: "training" must be an object', None)
        for key in ("n_parameters", "top_k", "context_length"):
            if isinstance(values[key], bool) or not isinstance(values[key], int):
                raise ModelCardError(f'{source}: "{key}" must be an integer', None)
        return cls(**values)
