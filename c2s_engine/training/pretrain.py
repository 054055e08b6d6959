"""Train a small C2S model from scratch: a tokenizer on the corpus, then a GPT-NeoX on the examples.

This is how the embedded demo models are made. The architecture is GPT-NeoX, the family of the
released Pythia-based C2S checkpoints, so the result loads through
:func:`c2s_engine.models.load_model` like any of them. The tokenizer
(:func:`c2s_engine.training.tokenizer.train_tokenizer`) keeps every gene symbol whole.

Training is TRL's SFTTrainer on the same prompt/completion examples as fine-tuning; by default
the loss covers the whole text, because a model that starts from nothing learns the language of
cell sentences from the prompts too (``completion_only_loss: true`` restricts it to answers).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset

from c2s_engine.models.card import CARD_FILENAME, ModelCard
from c2s_engine.training.records import RECORD_FILENAME, RunRecord
from c2s_engine.training.sft import (
    TrainResult,
    bf16_enabled,
    dataset_tasks,
    loss_metrics,
    text_columns,
)
from c2s_engine.training.tokenizer import train_tokenizer


@dataclass
class PretrainConfig:
    """Settings of one from-scratch run (the ``train:`` section of ``c2s train pretrain``).

    Attributes
    ----------
    output_dir
        Folder the model, tokenizer, card and run record are written to.
    hidden_size, num_hidden_layers, num_attention_heads, intermediate_size
        GPT-NeoX shape; the defaults give about 3-5 million parameters with a few thousand
        genes in the vocabulary.
    max_position_embeddings
        Context length in tokens (also the longest training example).
    dropout
        Dropout of the attention weights and of each block's output (GPT-NeoX's
        ``attention_dropout`` and ``hidden_dropout``); small datasets overfit without it.
    subword_vocab_size, min_word_frequency
        Tokenizer settings (:func:`~c2s_engine.training.tokenizer.train_tokenizer`).
    learning_rate, weight_decay, warmup_steps, lr_scheduler_type
        AdamW and its schedule (from scratch needs a far larger rate than fine-tuning).
    num_train_epochs, max_steps, per_device_train_batch_size, gradient_accumulation_steps
        Length of training and batch size.
    completion_only_loss
        Loss on the answers only instead of the whole text.
    train_sampling_strategy
        ``'random'`` or ``'group_by_length'`` (batches of similar length: far less padding,
        which decides CPU time when short single-cell and long multi-cell examples are mixed).
    bf16
        bf16 autocast; ``None`` turns it on where the GPU supports it.
    logging_steps, seed
        Steps between printed loss lines; seed of weights, data order and dropout.
    top_k, organisms, tasks, license
        Card fields: genes per cell sentence in the data, organisms seen, tasks trained
        (default: the dataset's ``task`` column) and licence text.
    """

    output_dir: str = "runs/pretrain"
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 1024
    dropout: float = 0.0
    subword_vocab_size: int = 2000
    min_word_frequency: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: float = 0.05
    lr_scheduler_type: str = "cosine"
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    completion_only_loss: bool = False
    train_sampling_strategy: str = "random"
    bf16: bool | None = None
    logging_steps: int = 10
    seed: int = 0
    top_k: int = 200
    organisms: list[str] = field(default_factory=lambda: ["Homo sapiens"])
    tasks: list[str] | None = None
    license: str = ""


def build_model(config: PretrainConfig, tokenizer) -> torch.nn.Module:
    """A randomly initialised GPTNeoXForCausalLM sized by ``config`` for ``tokenizer``."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(config.seed)
    model_config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        attention_dropout=config.dropout, hidden_dropout=config.dropout,
        tie_word_embeddings=False,  # as in Pythia
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPTNeoXForCausalLM(model_config)


def run_pretrain(
    train_dataset: Dataset,
    config: PretrainConfig,
    *,
    gene_symbols: Sequence[str] = (),
    eval_dataset: Dataset | None = None,
    record: RunRecord | None = None,
) -> TrainResult:
    """Train a tokenizer and a GPT-NeoX from scratch on prompt/completion examples.

    Parameters
    ----------
    train_dataset
        Examples with ``prompt`` and ``completion`` columns (``task`` names the card's tasks).
    config
        The run settings.
    gene_symbols
        Genes that must be whole tokens even if no training example names them (e.g. every
        ``var_name`` of the data).
    eval_dataset
        Held-out examples; their loss is reported as ``eval_loss``.
    record
        A run record already holding data hashes and split; a new one is made otherwise.

    Returns
    -------
    TrainResult
        The folder holds ``config.json``, ``model.safetensors``, the tokenizer, ``c2s.json``
        and ``c2s_run.json``.

    Raises
    ------
    C2SError
        Data without prompt/completion columns.
    ModelCardError
        A task in the data or config is not a prompt-registry task id.
    DeviceUnavailableError
        bf16 asked for without a suitable GPU.
    """
    from trl import SFTConfig, SFTTrainer

    record = record or RunRecord(kind="pretrain", config={}, seed=config.seed)
    train = text_columns(train_dataset)
    out = Path(config.output_dir)
    card = ModelCard.from_dict({
        "name": out.name, "architecture": "GPTNeoXForCausalLM", "n_parameters": 0,
        "tasks": config.tasks or dataset_tasks(train_dataset, eval_dataset),
        "top_k": config.top_k, "organisms": list(config.organisms),
        "context_length": config.max_position_embeddings, "prompt_family": "c2s",
        "license": config.license,
        "description": f"Small GPT-NeoX trained from scratch by c2s train pretrain; see "
                       f"{RECORD_FILENAME} for the data, split and metrics.",
    }, source="the pretrained model's card")

    print(f"training a tokenizer on {len(train)} examples and {len(gene_symbols)} genes")
    tokenizer = train_tokenizer(
        (p + c for p, c in zip(train["prompt"], train["completion"], strict=True)),
        gene_symbols, subword_vocab_size=config.subword_vocab_size,
        min_word_frequency=config.min_word_frequency,
        model_max_length=config.max_position_embeddings)
    model = build_model(config, tokenizer)
    n_parameters = sum(p.numel() for p in model.parameters())
    print(f"GPT-NeoX with {n_parameters:,} parameters, vocabulary {len(tokenizer):,} -> {out}")

    args = SFTConfig(
        output_dir=str(out), learning_rate=config.learning_rate,
        weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler_type, num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps, per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_position_embeddings, bf16=bf16_enabled(config.bf16),
        completion_only_loss=config.completion_only_loss, packing=False,
        train_sampling_strategy=config.train_sampling_strategy,
        logging_steps=config.logging_steps, seed=config.seed, data_seed=config.seed,
        save_strategy="no", report_to="none", dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train,
        eval_dataset=text_columns(eval_dataset) if eval_dataset is not None else None,
        processing_class=tokenizer,
    )
    metrics = loss_metrics(trainer, trainer.train())
    if eval_dataset is not None:
        metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
    metrics["n_parameters"] = int(n_parameters)

    record.config = {**record.config, "train": dataclasses.asdict(config)}
    record.metrics.update(metrics)
    record.output = str(out)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        card_data = dataclasses.replace(card, n_parameters=int(n_parameters)).to_dict()
        (out / CARD_FILENAME).write_text(json.dumps(card_data, indent=2) + "\n",
                                         encoding="utf-8")
        record.save(out / RECORD_FILENAME)
    return TrainResult(output_dir=out, metrics=metrics, record=record)
