"""Supervised fine-tuning of a C2S model on prompt/completion examples, with TRL's SFTTrainer.

Three modes, as in the paper's pipeline:

* ``full``: every weight is trained (fp32 weights, bf16 autocast on GPUs that support it);
* ``lora``: low-rank adapters (peft) on the attention projections of the architecture
  (:data:`LORA_TARGET_MODULES`), merged into the weights when training ends;
* ``qlora``: the same adapters on a 4-bit NF4 base (bitsandbytes, CUDA only), merged into a
  bf16 copy of the base at the end.

The loss is taken on the completion (the answer) only, and the defaults are the paper's
(lr 1e-5, weight decay 0.01). Whatever the mode, the result is a plain model folder
(``config.json``, ``model.safetensors``, tokenizer, ``c2s.json`` card, ``c2s_run.json`` run
record) that :func:`c2s_engine.models.load_model` loads exactly like a released checkpoint.

TRL runs on ``accelerate``, so the same config trains on several GPUs when started with
``accelerate launch --num_processes N -m c2s_engine.cli train sft --config CFG.yaml``; only the
main process writes the model, card and record.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from c2s_engine.errors import C2SError, DeviceUnavailableError
from c2s_engine.models.card import CARD_FILENAME, ModelCard
from c2s_engine.training.records import RECORD_FILENAME, RunRecord

MODES = ("full", "lora", "qlora")
#: Attention projections that LoRA adapts, per ``config.model_type``.
LORA_TARGET_MODULES: dict[str, list[str]] = {
    "gpt_neox": ["query_key_value"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
TEXT_COLUMNS = ("prompt", "completion")


@dataclass
class SFTRunConfig:
    """Settings of one SFT run (the ``train:`` section of a ``c2s train sft`` config).

    Attributes
    ----------
    model
        Base model: ``"demo"``, a saved model folder or a Hugging Face id (safetensors only).
    output_dir
        Folder the fine-tuned model, its card and run record are written to.
    mode
        ``"full"``, ``"lora"`` or ``"qlora"`` (4-bit base; needs CUDA).
    learning_rate, weight_decay
        AdamW settings; the paper's 1e-5 and 0.01 by default.
    num_train_epochs, max_steps
        Length of training; ``max_steps > 0`` overrides the epochs.
    per_device_train_batch_size, gradient_accumulation_steps
        Examples per step on each device, and steps accumulated per optimiser update.
    max_length
        Longest prompt + completion in tokens; longer examples are truncated.
    warmup_steps, lr_scheduler_type
        Learning-rate schedule; warmup is a step count, or a fraction of the run when < 1.
    lora_r, lora_alpha, lora_dropout, target_modules
        LoRA settings; ``target_modules`` defaults to :data:`LORA_TARGET_MODULES` of the
        architecture.
    gradient_checkpointing
        Trade compute for memory on large models.
    bf16
        bf16 autocast; ``None`` turns it on where the GPU supports it.
    logging_steps
        Steps between printed loss lines.
    seed
        Seed of weight init (LoRA), data order and dropout.
    tasks
        Task ids written to the card; by default the base model's tasks plus those in the
        dataset's ``task`` column.
    top_k
        Genes per cell sentence written to the card (the training data's); ``None`` keeps the
        base model's.
    """

    model: str = "demo"
    output_dir: str = "runs/sft"
    mode: str = "full"
    learning_rate: float = 1e-5
    weight_decay: float = 0.01
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    warmup_steps: float = 0.0
    lr_scheduler_type: str = "linear"
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


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes
    ----------
    output_dir
        The saved model folder.
    metrics
        ``train_loss`` (mean over the run), ``final_loss`` (last logged), ``losses`` (every
        logged value), ``steps`` and, for GRPO, the rewards.
    record
        The run record saved as ``c2s_run.json`` in ``output_dir``.
    """

    output_dir: Path
    metrics: dict[str, Any]
    record: RunRecord


def check_mode(mode: str) -> None:
    """Refuse an unknown mode, and QLoRA without a CUDA GPU."""
    if mode not in MODES:
        raise C2SError(f"unknown training mode {mode!r}", f"use one of {', '.join(MODES)}")
    if mode == "qlora" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "QLoRA trains adapters on a 4-bit base model, which needs an NVIDIA GPU "
            "(bitsandbytes on CUDA), and PyTorch sees none on this machine",
            'use mode: lora (same adapters on a full-precision base, runs on CPU) or mode: full, '
            "or run on a machine with a CUDA GPU",
        )


def load_base(name: str, mode: str):
    """The base model to train and its card, through the safe loader (safetensors only).

    Full and LoRA runs load fp32 weights on the CPU and let the trainer place them on each
    process's device; QLoRA loads the 4-bit base straight onto this process's GPU.
    """
    from accelerate import PartialState

    from c2s_engine.models import load_model

    if mode == "qlora":
        loaded = load_model(name, precision="4bit",
                            device=f"cuda:{PartialState().local_process_index}")
    else:
        loaded = load_model(name, precision="fp32", device="cpu")
    for notice in loaded.notices:
        print(f"note: {notice}")
    loaded.model.train()
    return loaded


def lora_config(model_type: str, config: Any, task_type: str = "CAUSAL_LM"):
    """peft ``LoraConfig`` for the architecture ``model_type`` from a run config's lora_* fields."""
    from peft import LoraConfig

    targets = config.target_modules or LORA_TARGET_MODULES.get(model_type)
    if not targets:
        raise C2SError(
            f"no default LoRA target modules for the {model_type!r} architecture",
            "set target_modules in the config to the names of its attention projections, "
            'e.g. target_modules: ["q_proj", "v_proj"]',
        )
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=list(targets),
                      bias="none", task_type=task_type)


def bf16_enabled(requested: bool | None) -> bool:
    """bf16 autocast where asked for, by default where the GPU supports it."""
    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if requested and not supported:
        raise DeviceUnavailableError("bf16 training was asked for but no GPU with bf16 is in use",
                                     "set bf16: false (or leave it unset) on this machine")
    return supported if requested is None else requested


def text_columns(dataset: Dataset) -> Dataset:
    """Only the prompt/completion columns the trainer reads (list-valued extras break batching)."""
    missing = [c for c in TEXT_COLUMNS if c not in dataset.column_names]
    if missing:
        raise C2SError(f"the training data lacks the column(s) {missing}",
                       "give examples with a 'prompt' and a 'completion' text column "
                       "(as c2s_engine.training.dataset.build_dataset writes)")
    return dataset.select_columns(list(TEXT_COLUMNS))


def dataset_tasks(*datasets: Dataset | None) -> list[str]:
    """Distinct values of the ``task`` column of the given datasets."""
    tasks: set[str] = set()
    for dataset in datasets:
        if dataset is not None and "task" in dataset.column_names:
            tasks.update(dataset.unique("task"))
    return sorted(tasks)


def loss_metrics(trainer, train_output) -> dict[str, Any]:
    """Losses of a finished trainer: mean over the run, last logged and every logged value."""
    losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    return {"train_loss": float(train_output.training_loss),
            "final_loss": losses[-1] if losses else float(train_output.training_loss),
            "losses": losses, "steps": int(trainer.state.global_step)}


def trained_card(base: ModelCard, name: str, tasks: Sequence[str], description: str,
                 top_k: int | None = None) -> ModelCard:
    """The card of a model trained from ``base`` on ``tasks``, validated before any training.

    Raises
    ------
    ModelCardError
        A task is not a prompt-registry task id.
    """
    data = {**base.to_dict(), "name": name, "tasks": sorted({*base.tasks, *tasks}),
            "description": description, "top_k": top_k or base.top_k}
    return ModelCard.from_dict(data, source="the trained model's card")


def save_model(trainer, out: Path, *, base_name: str, mode: str, card: ModelCard) -> None:
    """Write the trained weights (adapters merged), tokenizer and ``c2s.json`` card to ``out``.

    LoRA adapters are also kept under ``out/adapter`` so a run can be resumed or re-merged.
    Call on the main process only.
    """
    model = trainer.model
    if mode in ("lora", "qlora"):
        model.save_pretrained(out / "adapter")
        if mode == "qlora":
            # Merging into 4-bit weights would round them; merge into a bf16 copy instead.
            from peft import PeftModel

            from c2s_engine.models import load_model

            base = load_model(base_name, precision="bf16", device="cpu").model
            model = PeftModel.from_pretrained(base, out / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(out)
    trainer.processing_class.save_pretrained(out)
    card_data = dataclasses.replace(
        card, architecture=type(model).__name__,
        n_parameters=sum(p.numel() for p in model.parameters())).to_dict()
    (out / CARD_FILENAME).write_text(json.dumps(card_data, indent=2) + "\n", encoding="utf-8")


def run_sft(
    train_dataset: Dataset,
    config: SFTRunConfig,
    *,
    eval_dataset: Dataset | None = None,
    record: RunRecord | None = None,
) -> TrainResult:
    """Fine-tune ``config.model`` on prompt/completion examples with the loss on completions.

    Parameters
    ----------
    train_dataset
        Examples with ``prompt`` and ``completion`` text columns (other columns are ignored;
        ``task`` names the tasks the card will list).
    config
        The run settings.
    eval_dataset
        Held-out examples; their completion loss is reported as ``eval_loss``.
    record
        A run record already holding the data hashes and split (the CLI fills these); a new
        one is made otherwise.

    Returns
    -------
    TrainResult
        The model folder (``config.output_dir``) holds ``config.json``, ``model.safetensors``,
        the tokenizer, ``c2s.json`` and ``c2s_run.json``.

    Raises
    ------
    C2SError
        Unknown mode, data without prompt/completion columns, unknown architecture for LoRA.
    ModelCardError
        A task in the data or config is not a prompt-registry task id.
    DeviceUnavailableError
        QLoRA or bf16 without a suitable GPU.
    """
    from trl import SFTConfig, SFTTrainer

    check_mode(config.mode)
    record = record or RunRecord(kind="sft", config={}, seed=config.seed)
    loaded = load_base(config.model, config.mode)
    out = Path(config.output_dir)
    card = trained_card(
        loaded.card, out.name, config.tasks or dataset_tasks(train_dataset, eval_dataset),
        f"{loaded.card.name} fine-tuned by c2s train sft ({config.mode}); see {RECORD_FILENAME} "
        "for the data, split and metrics.", config.top_k)
    args = SFTConfig(
        output_dir=str(out), learning_rate=config.learning_rate,
        weight_decay=config.weight_decay, num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps, per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length, warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler_type, logging_steps=config.logging_steps,
        activation_checkpointing=config.gradient_checkpointing, bf16=bf16_enabled(config.bf16),
        seed=config.seed, data_seed=config.seed, completion_only_loss=True, packing=False,
        save_strategy="no", report_to="none", dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = SFTTrainer(
        model=loaded.model, args=args, train_dataset=text_columns(train_dataset),
        eval_dataset=text_columns(eval_dataset) if eval_dataset is not None else None,
        processing_class=loaded.tokenizer,
        peft_config=(lora_config(loaded.model.config.model_type, config)
                     if config.mode != "full" else None),
    )
    print(f"SFT ({config.mode}) of {loaded.name} on {len(train_dataset)} examples -> {out}")
    metrics = loss_metrics(trainer, trainer.train())
    if eval_dataset is not None:
        metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])

    record.config = {**record.config, "train": dataclasses.asdict(config)}
    record.metrics.update(metrics)
    record.output = str(out)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        save_model(trainer, out, base_name=config.model, mode=config.mode, card=card)
        record.save(out / RECORD_FILENAME)
    return TrainResult(output_dir=out, metrics=metrics, record=record)
