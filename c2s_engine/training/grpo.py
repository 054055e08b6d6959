"""GRPO of a C2S model with TRL's GRPOTrainer and the rewards of :mod:`~c2s_engine.training.rewards`.

For each prompt the model samples a group of ``num_generations`` answers; each answer's reward
is compared with its group's mean (the group-relative advantage), and a KL term weighted by
``beta`` keeps the policy near the starting model. The paper's settings are named presets
(:data:`PRESETS`); any of group size, beta and learning rate can be set on top of a preset.

Rewards are named in the config (:data:`~c2s_engine.training.rewards.REWARDS`) and read their
references from the dataset's columns: ``label_match`` and ``exact_label_match`` (``label``),
``bertscore_f1`` (``reference_text``), ``kendall_tau`` (``reference_sentence``, over
``gene_program``) and ``embedding_mse`` (``reference_sentence``, in a PCA of the real cells).

Like SFT, runs go through ``accelerate`` (``accelerate launch --num_processes N -m
c2s_engine.cli train grpo --config CFG.yaml``), and the saved folder loads with
:func:`c2s_engine.models.load_model`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from anndata import AnnData
from datasets import Dataset

from c2s_engine.errors import C2SError
from c2s_engine.training.records import RECORD_FILENAME, RunRecord
from c2s_engine.training.rewards import REWARDS, SentenceEmbedding
from c2s_engine.training.sft import (
    TrainResult,
    bf16_enabled,
    check_mode,
    dataset_tasks,
    load_base,
    lora_config,
    loss_metrics,
    save_model,
    trained_card,
)

#: The paper's GRPO settings: group size G, KL weight beta and learning rate.
PRESETS: dict[str, dict[str, float | int]] = {
    "qa": {"num_generations": 32, "beta": 0.03, "learning_rate": 5e-7},
    "l1000": {"num_generations": 24, "beta": 5e-3, "learning_rate": 1e-6},
}


@dataclass
class GRPORunConfig:
    """Settings of one GRPO run (the ``train:`` section of a ``c2s train grpo`` config).

    Attributes
    ----------
    model
        Starting model (usually an SFT result): ``"demo"``, a folder or a Hugging Face id.
    output_dir
        Folder the trained model, its card and run record are written to.
    preset
        ``"qa"`` (G=32, beta=0.03, lr 5e-7) or ``"l1000"`` (G=24, beta=5e-3, lr 1e-6).
    num_generations, beta, learning_rate
        Override the preset when set.
    rewards
        Names from :data:`~c2s_engine.training.rewards.REWARDS`; their values are summed.
    reward_weights
        One weight per reward (default all 1).
    gene_program
        Genes of the program ``kendall_tau`` ranks (e.g. interferon-stimulated genes).
    gene_program_gmt, gene_program_name
        Alternatively, a GMT file and the name of the set in it to use as the program.
    text_encoder
        Folder of the BERTScore encoder (e.g. BioBERT); empty for all-MiniLM-L6-v2.
    embedding_components
        PCA dimensions of ``embedding_mse``.
    mode
        ``"full"``, ``"lora"`` or ``"qlora"`` (see :mod:`~c2s_engine.training.sft`).
    per_device_train_batch_size
        Completions per device and step; defaults to one group (``num_generations``). The
        completions per optimiser step over all devices must be a multiple of the group size.
    gradient_accumulation_steps, num_train_epochs, max_steps, weight_decay
        Optimisation length and settings.
    max_completion_length, temperature
        Sampling of the answers.
    lora_r, lora_alpha, lora_dropout, target_modules, gradient_checkpointing, bf16
        As in :class:`~c2s_engine.training.sft.SFTRunConfig`.
    logging_steps, seed
        Steps between printed reward/loss lines; seed of sampling and data order.
    tasks
        Task ids written to the card (default: the starting model's plus the dataset's).
    top_k
        Genes per cell sentence written to the card; ``None`` keeps the starting model's.
    """

    model: str = "demo"
    output_dir: str = "runs/grpo"
    preset: str = "qa"
    num_generations: int | None = None
    beta: float | None = None
    learning_rate: float | None = None
    rewards: list[str] = field(default_factory=lambda: ["label_match"])
    reward_weights: list[float] | None = None
    gene_program: list[str] = field(default_factory=list)
    gene_program_gmt: str = ""
    gene_program_name: str = ""
    text_encoder: str = ""
    embedding_components: int = 50
    mode: str = "full"
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = -1
    weight_decay: float = 0.01
    max_completion_length: int = 256
    temperature: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None
    gradient_checkpointing: bool = False
    bf16: bool | None = None
    logging_steps: int = 10
    seed: int = 0
    tasks: list[str] | None = None
    top_k: int | None = None

    def resolved(self) -> GRPORunConfig:
        """A copy with the preset's group size, beta and learning rate filled in.

        Raises
        ------
        C2SError
            Unknown preset.
        """
        if self.preset not in PRESETS:
            raise C2SError(f"unknown GRPO preset {self.preset!r}",
                           f"use one of {', '.join(PRESETS)} and override num_generations, "
                           "beta or learning_rate as needed")
        values = {k: v if getattr(self, k) is None else getattr(self, k)
                  for k, v in PRESETS[self.preset].items()}
        resolved = dataclasses.replace(self, **values)
        if resolved.per_device_train_batch_size is None:
            resolved.per_device_train_batch_size = int(resolved.num_generations)
        return resolved


def gene_program(config: GRPORunConfig) -> list[str]:
    """The ``kendall_tau`` program: the listed genes, or the named set of the GMT file.

    Raises
    ------
    C2SError
        Both or half of the GMT settings given, or a set name the file lacks.
    """
    if not (config.gene_program_gmt or config.gene_program_name):
        return list(config.gene_program)
    if config.gene_program or not (config.gene_program_gmt and config.gene_program_name):
        raise C2SError("the gene program is given both ways or half of gene_program_gmt/"
                       "gene_program_name is missing",
                       "set either gene_program: [genes] or both gene_program_gmt and "
                       "gene_program_name")
    from c2s_engine.training.targets import read_gmt

    sets = read_gmt(config.gene_program_gmt)
    if config.gene_program_name not in sets:
        raise C2SError(f"{config.gene_program_gmt} has no gene set named "
                       f"{config.gene_program_name!r}",
                       f"use one of its sets, e.g. {', '.join(list(sets)[:3])}")
    return list(sets[config.gene_program_name])


def build_rewards(config: GRPORunConfig, reference_cells: AnnData | None) -> list[Callable]:
    """The reward callables named in ``config``, bound to their settings.

    Raises
    ------
    C2SError
        An unknown reward name, ``kendall_tau`` without a gene program, or ``embedding_mse``
        without real cells to fit its embedding on.
    """
    unknown = [name for name in config.rewards if name not in REWARDS]
    if unknown or not config.rewards:
        raise C2SError(f"unknown or no GRPO rewards {unknown or config.rewards}",
                       f"name rewards among {', '.join(REWARDS)}")
    rewards = []
    for name in config.rewards:
        reward = REWARDS[name]
        if name == "kendall_tau":
            program = gene_program(config)
            if len(set(program)) < 2:
                raise C2SError("the kendall_tau reward needs a gene program of 2 or more genes",
                               "set gene_program: [ISG15, IFI6, MX1, ...] or gene_program_gmt "
                               "and gene_program_name in the train section")
            reward = functools.partial(reward, program=program)
        elif name == "bertscore_f1":
            reward = functools.partial(reward, encoder=config.text_encoder or None)
        elif name == "embedding_mse":
            if reference_cells is None:
                raise C2SError("the embedding_mse reward needs the real cells to fit its "
                               "embedding on", "give the training data files in the data section")
            reward = functools.partial(reward, embedding=SentenceEmbedding(
                reference_cells, n_components=config.embedding_components, seed=config.seed))
        rewards.append(reward)
    return rewards


def _check_batch(config: GRPORunConfig) -> None:
    group = int(config.num_generations)
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    if group < 2 or per_step % group:
        raise C2SError(
            f"GRPO compares the {group} answers of a group, but one device completes "
            f"{per_step} answers per optimiser step (batch {config.per_device_train_batch_size} "
            f"x accumulation {config.gradient_accumulation_steps}), not a multiple of the group",
            f"use num_generations >= 2 and a per_device_train_batch_size x "
            f"gradient_accumulation_steps that is a multiple of {max(group, 2)}")


def reward_metrics(trainer) -> dict[str, Any]:
    """Mean reward of every logged step, the last one, and the last value of each reward.

    A reward that applied to no example of the last logged step (TRL logs None) is left out.
    """
    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    rewards = [float(entry["reward"]) for entry in logged]
    metrics: dict[str, Any] = {"rewards": rewards, "final_reward": rewards[-1] if rewards
                               else float("nan")}
    if logged:
        metrics["final_reward_by_function"] = {
            key.removeprefix("rewards/").removesuffix("/mean"): float(value)
            for key, value in logged[-1].items()
            if key.startswith("rewards/") and key.endswith("/mean") and value is not None}
    return metrics


def run_grpo(
    train_dataset: Dataset,
    config: GRPORunConfig,
    *,
    reference_cells: AnnData | None = None,
    record: RunRecord | None = None,
) -> TrainResult:
    """Improve ``config.model`` with GRPO on the dataset's prompts and the configured rewards.

    Parameters
    ----------
    train_dataset
        Examples with a ``prompt`` column and the reference columns the rewards read
        (``label``, ``reference_text``, ``reference_sentence``, ``task``).
    config
        The run settings; the preset fills whatever is not set.
    reference_cells
        Real cells (prepared, with sentences) for the ``embedding_mse`` reward's PCA.
    record
        A run record already holding data hashes and split; a new one is made otherwise.

    Returns
    -------
    TrainResult
        ``metrics`` hold the losses and the rewards (``rewards``, ``final_reward``,
        ``final_reward_by_function``).

    Raises
    ------
    C2SError
        Unknown preset/reward/mode, missing reward settings, a batch that is not a multiple of
        the group, or data without a ``prompt`` column.
    DeviceUnavailableError
        QLoRA or bf16 without a suitable GPU.
    """
    from trl import GRPOConfig, GRPOTrainer

    config = config.resolved()
    check_mode(config.mode)
    _check_batch(config)
    if "prompt" not in train_dataset.column_names:
        raise C2SError("the GRPO data lack a 'prompt' column",
                       "give examples as c2s_engine.training.dataset.build_dataset writes them")
    rewards = build_rewards(config, reference_cells)
    record = record or RunRecord(kind="grpo", config={}, seed=config.seed)
    loaded = load_base(config.model, config.mode)
    out = Path(config.output_dir)
    card = trained_card(
        loaded.card, out.name, config.tasks or dataset_tasks(train_dataset),
        f"{loaded.card.name} improved by c2s train grpo (preset {config.preset}, rewards "
        f"{', '.join(config.rewards)}); see {RECORD_FILENAME} for the data, split and metrics.",
        config.top_k)
    args = GRPOConfig(
        output_dir=str(out), learning_rate=config.learning_rate, beta=config.beta,
        num_generations=config.num_generations, weight_decay=config.weight_decay,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_train_epochs, max_steps=config.max_steps,
        max_completion_length=config.max_completion_length, temperature=config.temperature,
        reward_weights=config.reward_weights, activation_checkpointing=config.gradient_checkpointing,
        bf16=bf16_enabled(config.bf16), logging_steps=config.logging_steps, seed=config.seed,
        data_seed=config.seed, save_strategy="no", report_to="none", dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = GRPOTrainer(
        model=loaded.model, reward_funcs=rewards, args=args, train_dataset=train_dataset,
        processing_class=loaded.tokenizer,
        peft_config=(lora_config(loaded.model.config.model_type, config)
                     if config.mode != "full" else None),
    )
    print(f"GRPO ({config.mode}, preset {config.preset}: G={config.num_generations}, "
          f"beta={config.beta}, lr={config.learning_rate}) of {loaded.name} on "
          f"{len(train_dataset)} prompts, rewards {', '.join(config.rewards)} -> {out}")
    metrics = {**loss_metrics(trainer, trainer.train()), **reward_metrics(trainer)}

    record.config = {**record.config, "train": dataclasses.asdict(config)}
    record.metrics.update(metrics)
    record.output = str(out)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        save_model(trainer, out, base_name=config.model, mode=config.mode, card=card)
        record.save(out / RECORD_FILENAME)
    return TrainResult(output_dir=out, metrics=metrics, record=record)
