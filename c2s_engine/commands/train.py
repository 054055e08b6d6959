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
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from c2s_engine.errors import C2SError, MissingFileError

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


def held_out_mask(adata, data_path: str, training, cells: str) -> tuple[np.ndarray, str]:
    """Which cells to score, and how they were chosen (``'held-out'`` or ``'all'``).

    Raises
    ------
    C2SError
        ``--cells held-out`` but the model's record names no held-out cells of this file.
    """
    if cells == "all":
        return np.ones(adata.n_obs, dtype=bool), "all"
    test_cells = (training.split.get("test_cells", {}) if training is not None else {})
    name = Path(data_path).stem
    if name not in test_cells:
        if cells == "held-out":
            raise C2SError(
                f"the model's run record names no held-out cells of {Path(data_path).name} "
                f"(recorded datasets: {sorted(test_cells) or 'none'})",
                "evaluate on the file the model was trained with, or pass --cells all")
        print(f"note: no held-out split of {Path(data_path).name} is recorded with the model; "
              "scoring every cell")
        return np.ones(adata.n_obs, dtype=bool), "all"
    mask = adata.obs_names.isin(test_cells[name])
    if not mask.any():
        raise C2SError(f"none of the {len(test_cells[name])} held-out cells recorded for {name} "
                       "are in this file", "pass the same file the model was trained on")
    return np.asarray(mask), "held-out"


def _setting(args: argparse.Namespace, training, name: str, flag: str) -> str:
    value = getattr(args, name) or (training.config.get("data", {}).get(name, "")
                                    if training is not None else "")
    if not value:
        raise C2SError(f"--task {args.task} needs {flag} and the model's run record does not "
                       "give it", f"pass {flag} <obs column or value>")
    return str(value)


def evaluate_annotation(adata, scored: np.ndarray, model, label_key: str,
                        batch_size: int) -> dict[str, Any]:
    """Accuracy and macro-F1 of scored annotation on the ``scored`` cells.

    The candidates are every label of the file, so a class absent from the scored cells can
    still be (wrongly) predicted.
    """
    from c2s_engine.tasks.annotate import annotate

    labels = adata.obs[label_key].dropna().astype(str)
    candidates = sorted(set(labels))
    subset = adata[scored].copy()
    result = annotate(subset, model, labels=candidates, truth=label_key, mode="score",
                      batch_size=batch_size)
    return {"label_key": label_key, "n_candidates": len(candidates),
            **result.metrics.to_dict()}


def _halves(adata, key: str, seed: int):
    """Two random halves of every condition (the real-vs-real reference distance)."""
    rng = np.random.default_rng(seed)
    first = np.zeros(adata.n_obs, dtype=bool)
    for value in adata.obs[key].astype(str).unique():
        members = np.flatnonzero((adata.obs[key].astype(str) == value).to_numpy())
        first[rng.permutation(members)[: members.size // 2]] = True
    return adata[first], adata[~first]


def evaluate_generation(adata, scored: np.ndarray, model, label_key: str, *, n: int,
                        seed: int, batch_size: int) -> dict[str, Any]:
    """scFID/MMD of cells generated per cell type against the real ``scored`` cells.

    Cells are generated for every cell type with at least 2 scored cells (``n`` per type),
    reconstructed with the reverse transform of the other cells when there are any, and
    compared per cell type in a PCA fitted on the real scored cells. The same metrics between
    two random halves of the real cells are the floor a perfect generator would reach.
    """
    from c2s_engine.metrics import compare_distributions
    from c2s_engine.tasks.generate import generate_cells

    real = adata[scored].copy()
    counts = real.obs[label_key].astype(str).value_counts()
    types = sorted(counts[counts >= 2].index)
    if not types:
        raise C2SError("no cell type has 2 or more cells to compare generated cells with",
                       "score more cells (--cells all) or choose another --label-key")
    reference = adata[~scored].copy() if (~scored).any() else adata.copy()
    generated = generate_cells(reference, model, cell_type=types, n=n, seed=seed,
                               batch_size=batch_size)
    generated.obs[label_key] = generated.obs["c2s_condition"].astype(str).to_numpy()
    real.obs[label_key] = real.obs[label_key].astype(str)
    comparison = compare_distributions(real, generated, condition_key=label_key)
    half_a, half_b = _halves(real, label_key, seed)
    floor = compare_distributions(half_a, half_b, condition_key=label_key)
    return {"label_key": label_key, "cell_types": types, "n_per_type": n,
            "generated_vs_real": comparison.to_dict(), "real_vs_real": floor.to_dict()}


def _shifted_controls(adata, control: np.ndarray, shift: pd.Series):
    """Control cells plus a per-gene mean shift (clipped at 0): the baseline prediction."""
    from anndata import AnnData

    from c2s_engine.metrics import cell_matrix

    values = cell_matrix(adata[control])
    values = values.toarray() if hasattr(values, "toarray") else np.asarray(values)
    shifted = np.maximum(values + shift.reindex(adata.var_names).to_numpy()[None, :], 0.0)
    return AnnData(X=shifted.astype(np.float32), obs=adata.obs.iloc[np.flatnonzero(control)].copy(),
                   var=pd.DataFrame(index=adata.var_names.copy()))


def evaluate_perturbation(adata, scored: np.ndarray, model, *, label_key: str,
                          condition_key: str, control_value: str, names: Mapping[str, str],
                          perturbation: str | None, seed: int, batch_size: int
                          ) -> dict[str, Any]:
    """MMD, scFID and Pearson r of the predicted response of the held-out perturbed cells.

    For each perturbed condition among the scored cells, the control cells of the same cell
    types are perturbed by the model and compared with the real scored perturbed cells. The
    baseline adds to the same controls the mean change (perturbed minus control) measured on
    the other, unscored cells. The perturbation is named ``perturbation`` in prompts, or else
    ``names[condition value]`` (the training config's ``perturbation_names``) or the value.
    """
    from c2s_engine.metrics import compare_distributions, mean_expression, pearson_delta
    from c2s_engine.tasks.perturb import predict_perturbation

    condition = adata.obs[condition_key].astype(str).to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()
    is_control = condition == control_value
    results: dict[str, Any] = {}
    for value in sorted(set(condition[scored & ~is_control])):
        real_mask = scored & (condition == value)
        types = sorted(set(labels[real_mask]))
        control = is_control & np.isin(labels, types)
        if not control.any():
            raise C2SError(f"no control cell ({condition_key} == {control_value!r}) of the "
                           f"cell types {types}", "evaluate on data holding their controls")
        real, controls = adata[real_mask].copy(), adata[control].copy()
        word = perturbation or names.get(value, value)
        predicted = predict_perturbation(controls, word, model, seed=seed, batch_size=batch_size)
        predicted.obs[label_key] = controls.obs[label_key].astype(str).to_numpy()
        real.obs[label_key] = real.obs[label_key].astype(str)
        train_pert = ~scored & (condition == value) & ~np.isin(labels, types)
        train_ctrl = ~scored & is_control & ~np.isin(labels, types)
        entry: dict[str, Any] = {"perturbation": word, "cell_types": types,
                                 "n_real": int(real_mask.sum()), "n_controls": int(control.sum())}
        entry["model"] = _response_metrics(real, controls, predicted, label_key,
                                           compare_distributions, pearson_delta)
        if train_pert.any() and train_ctrl.any():
            shift = mean_expression(adata[train_pert]) - mean_expression(adata[train_ctrl])
            baseline = _shifted_controls(adata, control, shift)
            entry["baseline_mean_shift"] = _response_metrics(
                real, controls, baseline, label_key, compare_distributions, pearson_delta)
        results[value] = entry
    if not results:
        raise C2SError(f"no scored cell is perturbed ({condition_key} != {control_value!r})",
                       "evaluate a model whose split held out perturbed cells, or --cells all")
    return {"label_key": label_key, "condition_key": condition_key,
            "control_value": control_value, "conditions": results}


def _response_metrics(real, controls, predicted, label_key, compare, pearson) -> dict[str, Any]:
    comparison = compare(real, predicted, condition_key=label_key)
    return {**comparison.to_dict(), "pearson_delta": pearson(controls, real, predicted)}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from c2s_engine.readers import read
    from c2s_engine.training.records import RECORD_FILENAME, RunRecord, describe_inputs
    from c2s_engine.validation import prepare

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
    elif args.task == "generate":
        metrics = evaluate_generation(adata, scored, model, label_key, n=args.n, seed=args.seed,
                                      batch_size=args.batch_size)
        summary = (f"scFID {metrics['generated_vs_real']['summary']['scfid']:.3g} "
                   f"(real vs real {metrics['real_vs_real']['summary']['scfid']:.3g})")
    else:
        names = (training.config.get("data", {}).get("perturbation_names", {})
                 if training is not None else {})
        metrics = evaluate_perturbation(
            adata, scored, model, label_key=label_key,
            condition_key=_setting(args, training, "condition_key", "--condition-key"),
            control_value=_setting(args, training, "control_value", "--control-value"),
            names=names, perturbation=args.perturbation, seed=args.seed, batch_size=args.batch_size)
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
                   help="annotate: accuracy/macro-F1; generate: scFID/MMD; "
                        "perturb: MMD/scFID/Pearson r with a mean-shift baseline")
    p.add_argument("--cells", choices=["auto", "held-out", "all"], default="auto",
                   help="held-out cells from the model's run record, or every cell "
                        "(auto: held-out when recorded)")
    p.add_argument("--label-key", default=None, help="obs column of cell types "
                   "(default: the training config's)")
    p.add_argument("--condition-key", default=None, help="perturb: obs column of conditions")
    p.add_argument("--control-value", default=None, help="perturb: value marking control cells")
    p.add_argument("--perturbation", default=None, help="perturb: the perturbation in words")
    p.add_argument("--n", type=int, default=20, help="generate: cells per cell type")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and halves")
    p.add_argument("--out", default=None, help="evaluation record path (.json; default: "
                   "c2s_eval_<task>.json in the model folder)")
    p.set_defaults(func=cmd_evaluate)

