"""``c2s train sft|grpo|pretrain --config CFG.yaml`` and ``c2s evaluate``.

A training config is one YAML file with three parts::

    seed: 0                 # optional; the default seed of data and training
    data:                   # DatasetConfig fields (inputs: [files], tasks, split, ...),
      inputs: [pbmc.h5ad]   #   or {saved: folder written by save_dataset}
      label_key: cell_type
      tasks: [cell_type_prediction]
    train:                  # SFTRunConfig / GRPORunConfig / PretrainConfig fields
      model: demo
      output_dir: runs/sft

Every run prints progress and writes a run record (``c2s_run.json``: config, sha256 of the
input files, split, metrics, seed, versions) next to the model it saves. The same command runs
on several GPUs under ``accelerate launch --num_processes N -m c2s_engine.cli train ...``.

``c2s evaluate --model M --data D --task T`` scores a model on the cells its training held out
(read from the model's run record; ``--cells all`` scores the whole file) and writes an
evaluation record; the metrics are also added under ``metrics.held_out`` of the model's record.
The scoring itself lives in :mod:`c2s_engine.training.evaluation`, shared with the web app.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from c2s_engine.errors import C2SError, MissingFileError
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE
from c2s_engine.training.evaluation import (
    annotation_baselines,
    evaluate_annotation,
    evaluate_generation,
    evaluate_perturbation,
    held_out_mask,
    paired_with_baselines,
)

TRAIN_KINDS = ("sft", "grpo", "pretrain")
EVAL_TASKS = ("annotate", "generate", "perturb")
_TOP_KEYS = ("seed", "data", "train")


# --------------------------------------------------------------------------- configs


def read_config(path: str | Path) -> dict[str, Any]:
    """The ``{seed, data, train}`` mapping of a YAML run config.

    Raises
    ------
    MissingFileError, C2SError
        Missing file, invalid YAML, unknown top-level keys or no ``data`` section.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"the config file {path} does not exist",
                               "pass the path of a YAML config (see configs/ for examples)")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise C2SError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})",
                       "fix the line named, e.g. indentation or a missing colon") from exc
    if not isinstance(config, Mapping):
        raise C2SError(f"{path} does not hold a YAML mapping", "write seed:, data: and train:")
    unknown = sorted(set(config) - set(_TOP_KEYS))
    if unknown:
        raise C2SError(f"{path} has unknown top-level keys {unknown}",
                       f"use only {', '.join(_TOP_KEYS)}")
    if not isinstance(config.get("data"), Mapping):
        raise C2SError(f"{path} has no data: section",
                       "add data: with inputs: [files] (or saved: a dataset folder)")
    return {"seed": int(config.get("seed", 0)), "data": dict(config["data"]),
            "train": dict(config.get("train") or {})}


def run_config(kind: str, values: Mapping[str, Any], seed: int):
    """The trainer config dataclass of ``kind`` from the ``train:`` section.

    Raises
    ------
    C2SError
        Keys the trainer does not have (the allowed ones are listed).
    """
    from c2s_engine.training.grpo import GRPORunConfig
    from c2s_engine.training.pretrain import PretrainConfig
    from c2s_engine.training.sft import SFTRunConfig

    cls = {"sft": SFTRunConfig, "grpo": GRPORunConfig, "pretrain": PretrainConfig}[kind]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise C2SError(f"the train: section has keys {unknown} that c2s train {kind} does not "
                       "know", f"use only {', '.join(allowed)}")
    return cls(**{"seed": seed, **values})


def load_training_data(data: Mapping[str, Any], seed: int):
    """Examples, split and inputs of a ``data:`` section.

    Returns
    -------
    tuple
        ``(DatasetDict, SplitInfo, [prepared AnnData], [input paths], data config dict)``;
        a saved dataset gives no AnnData.
    """
    from c2s_engine.readers import read
    from c2s_engine.training.dataset import DatasetConfig, build_dataset, load_saved_dataset

    if "saved" in data:
        if set(data) != {"saved"}:
            raise C2SError("data: saved: cannot be combined with other data keys",
                           "either name a saved dataset folder or the inputs to build one from")
        folder = Path(data["saved"])
        if not folder.is_dir():
            raise MissingFileError(f"the saved dataset {folder} does not exist",
                                   "pass the folder written by save_dataset")
        dataset, split = load_saved_dataset(folder)
        return dataset, split, [], [folder], {"saved": str(folder)}
    config = DatasetConfig.from_dict({"seed": seed, **data})
    if not config.inputs:
        raise C2SError("the data: section lists no inputs",
                       "add inputs: [path/to/data.h5ad, ...]")
    missing = [p for p in config.inputs if not Path(p).exists()]
    if missing:
        raise MissingFileError(f"input file(s) not found: {', '.join(missing)}",
                               "check the paths under data: inputs (relative to where c2s runs)")
    print(f"reading {len(config.inputs)} input(s) and building examples")
    adatas = [read(p, backed=False) for p in config.inputs]
    dataset, split = build_dataset(adatas, config)
    print("examples: " + ", ".join(f"{s} {len(dataset[s])}" for s in dataset))
    return dataset, split, adatas, list(config.inputs), config.to_dict()


def cmd_train(args: argparse.Namespace) -> int:
    from c2s_engine.training.records import RunRecord, describe_inputs

    config = read_config(args.config)
    seed = config["seed"]
    train_config = run_config(args.kind, config["train"], seed)
    dataset, split, adatas, paths, data_config = load_training_data(config["data"], seed)
    if "top_k" not in config["train"] and "top_k" in data_config:
        train_config.top_k = int(data_config["top_k"])  # the card states the data's sentences
    record = RunRecord(kind=args.kind, config={"seed": seed, "data": data_config}, seed=seed,
                       data=describe_inputs(paths), split=split.to_dict())
    test = dataset["test"] if "test" in dataset and len(dataset["test"]) else None
    if args.kind == "sft":
        from c2s_engine.training.sft import run_sft

        result = run_sft(dataset["train"], train_config, eval_dataset=test, record=record)
    elif args.kind == "grpo":
        from c2s_engine.training.grpo import run_grpo

        reference = _training_cells(adatas, split) if adatas else None
        result = run_grpo(dataset["train"], train_config, reference_cells=reference,
                          record=record)
    else:
        from c2s_engine.training.pretrain import run_pretrain

        genes = list(dict.fromkeys(g for a in adatas for g in a.var_names.astype(str)))
        result = run_pretrain(dataset["train"], train_config, gene_symbols=genes,
                              eval_dataset=test, record=record)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under accelerate/torchrun only rank 0 saved
        return 0
    shown = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
    print(f"saved {result.output_dir} ({', '.join(f'{k}={v:.4g}' for k, v in shown.items())})")
    return 0


def _training_cells(adatas, split):
    """The training cells of the first input (the reward embedding is fitted on them)."""
    adata = adatas[0]
    name = next(iter(split.test_cells), "")
    held = set(split.test_cells.get(name, []))
    return adata[~adata.obs_names.isin(list(held))].copy()


# --------------------------------------------------------------------------- evaluation


def _model_folder(model: str) -> Path | None:
    from c2s_engine.models.loading import resolve_source

    source = resolve_source(model)
    return Path(source.location) if source.local else None


def _training_record(folder: Path | None):
    from c2s_engine.training.records import RECORD_FILENAME, RunRecord

    if folder is None or not (folder / RECORD_FILENAME).is_file():
        return None
    return RunRecord.load(folder / RECORD_FILENAME)


def _setting(args: argparse.Namespace, training, name: str, flag: str) -> str:
    value = getattr(args, name) or (training.config.get("data", {}).get(name, "")
                                    if training is not None else "")
    if not value:
        raise C2SError(f"--task {args.task} needs {flag} and the model's run record does not "
                       "give it", f"pass {flag} <obs column or value>")
    return str(value)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from c2s_engine.readers import read
    from c2s_engine.training.records import RECORD_FILENAME, RunRecord, describe_inputs
    from c2s_engine.validation import prepare

    if args.temperature <= 0:
        raise C2SError(f"--temperature {args.temperature:g} is not above 0",
                       "pass a positive temperature (1 samples from the model as trained), "
                       "or --greedy")
    if not Path(args.data).exists():
        raise MissingFileError(f"the data file {args.data} does not exist",
                               "pass the .h5ad (or other readable file) to evaluate on")
    folder = _model_folder(args.model)
    training = _training_record(folder)
    out = Path(args.out) if args.out else (folder or Path.cwd()) / f"c2s_eval_{args.task}.json"
    if not out.parent.is_dir():
        raise C2SError(f"output folder {out.parent} does not exist",
                       "create it or choose another --out path")
    print(f"reading {args.data}")
    adata = read(args.data, backed=False)
    prepare(adata)
    scored, chosen = held_out_mask(adata, args.data, training, args.cells)
    print(f"evaluating {args.task} of {args.model} on {int(scored.sum())} {chosen} cells")
    from c2s_engine.tasks.runtime import resolve_model

    model = resolve_model(args.model)
    label_key = _setting(args, training, "label_key", "--label-key")
    if args.task == "annotate":
        metrics = evaluate_annotation(adata, scored, model, label_key, args.batch_size)
        summary = f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
        if chosen == "held-out":  # baselines learn from the cells the model trained on
            metrics["baselines"] = annotation_baselines(adata, scored, label_key, seed=args.seed)
            paired = paired_with_baselines(adata, label_key, metrics, metrics["baselines"])
            metrics["paired_tests"] = paired
            summary += "; baselines " + ", ".join(
                f"{name} {b['accuracy']:.3f} (McNemar p {paired[name]['p_value']:.2g})"
                for name, b in metrics["baselines"].items())
    elif args.task == "generate":
        metrics = evaluate_generation(adata, scored, model, label_key, n=args.n or None,
                                      seed=args.seed, batch_size=args.batch_size)
        summary = (f"scFID {metrics['generated_vs_real']['summary']['scfid']:.3g} "
                   f"(real vs real {metrics['real_vs_real']['summary']['scfid']:.3g})")
    else:
        names = (training.config.get("data", {}).get("perturbation_names", {})
                 if training is not None else {})
        metrics = evaluate_perturbation(
            adata, scored, model, label_key=label_key,
            condition_key=_setting(args, training, "condition_key", "--condition-key"),
            control_value=_setting(args, training, "control_value", "--control-value"),
            names=names, perturbation=args.perturbation, seed=args.seed, batch_size=args.batch_size,
            do_sample=not args.greedy, temperature=args.temperature,
            contrast_weight=args.contrast_weight)
        summary = "; ".join(f"{v}: MMD {e['model']['summary']['mmd']:.3g}, Pearson r "
                            f"{e['model']['pearson_delta']:.3f}"
                            for v, e in metrics["conditions"].items())
    record = RunRecord(kind="evaluate", seed=args.seed, data=describe_inputs([args.data]),
                       config={"model": args.model, "task": args.task, "cells": chosen,
                               "n_cells": int(scored.sum())},
                       split=training.split if training is not None and chosen == "held-out"
                       else {}, output=str(out))
    record.metrics["held_out"][args.task] = metrics
    record.save(out)
    if training is not None and chosen == "held-out":
        training.metrics.setdefault("held_out", {})[args.task] = metrics
        training.save(folder / RECORD_FILENAME)
    print(f"{args.task}: {summary}; record written to {out}")
    return 0


# --------------------------------------------------------------------------- parsers


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` (with ``sft``, ``grpo``, ``pretrain``) and ``evaluate`` to ``c2s``."""
    train = subparsers.add_parser("train", help="train a model: sft, grpo or pretrain")
    kinds = train.add_subparsers(dest="train_kind", metavar="KIND", required=True)
    helps = {"sft": "supervised fine-tuning (full, LoRA or QLoRA) of a C2S model",
             "grpo": "GRPO with C2S rewards (label match, BERTScore, Kendall tau, ...)",
             "pretrain": "train a small GPT-NeoX and its tokenizer from scratch"}
    for kind in TRAIN_KINDS:
        p = kinds.add_parser(kind, help=helps[kind])
        p.add_argument("--config", required=True, help="YAML run config (see configs/)")
        p.set_defaults(func=cmd_train, kind=kind)

    p = subparsers.add_parser("evaluate", help="score a model on held-out cells")
    p.add_argument("--model", required=True, help="'demo', a model folder or a Hugging Face id")
    p.add_argument("--data", required=True, help="data file (the one the model was trained on)")
    p.add_argument("--task", required=True, choices=EVAL_TASKS,
                   help="annotate: accuracy/macro-F1 (and logistic-regression and kNN "
                        "baselines on held-out cells); generate: scFID/MMD; "
                        "perturb: MMD/scFID/Pearson r with a mean-shift baseline")
    p.add_argument("--cells", choices=["auto", "held-out", "all"], default="auto",
                   help="held-out cells from the model's run record, or every cell "
                        "(auto: held-out when recorded)")
    p.add_argument("--label-key", default=None, help="obs column of cell types "
                   "(default: the training config's)")
    p.add_argument("--condition-key", default=None, help="perturb: obs column of conditions")
    p.add_argument("--control-value", default=None, help="perturb: value marking control cells")
    p.add_argument("--perturbation", default=None, help="perturb: the perturbation in words")
    p.add_argument("--n", type=int, default=20, help="generate: cells per cell type (0: as "
                   "many as the scored cells of each type)")
    p.add_argument("--greedy", action="store_true", help="perturb: greedy answers instead of "
                   "sampled ones (generated populations are compared, so sampling is the default)")
    p.add_argument("--temperature", type=float, default=1.0, help="perturb: sampling temperature")
    p.add_argument("--contrast-weight", type=float, default=0.0, metavar="W",
                   help="perturb: contrastive guidance against controls of the other cell types "
                        "(0: off)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="prompts per batch")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and halves")
    p.add_argument("--out", default=None, help="evaluation record path (.json; default: "
                   "c2s_eval_<task>.json in the model folder)")
    p.set_defaults(func=cmd_evaluate)

