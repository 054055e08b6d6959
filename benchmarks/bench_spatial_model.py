"""Held-out evaluation of the osmfish-spatial model on the held-out stripe of tissue, one run.

The model was trained with a stripe of the osmFISH cortex held out (split ``'spatial'``; the
held-out cells are read from its ``c2s_run.json``). On the held-out stripe only (its cells and
the neighbourhoods among them) this scores:

* niche label prediction (``obs['Region']``) by label scoring over the 11 regions
  (:func:`c2s_engine.tasks.spatial.predict_niche`): accuracy and macro-F1, next to a
  majority-class baseline and the two expression baselines of
  :func:`c2s_engine.training.evaluation.annotation_baselines` (CellTypist-style logistic
  regression and kNN on PCA), all fitted on the training cells;
* same-neighbourhood prediction (:func:`c2s_engine.tasks.spatial.predict_same_neighborhood`):
  accuracy on balanced yes/no sets (a centre and its 6 nearest cells, or the centre and as many
  distant cells; at most 5 cells per set as in training), next to the 0.5 of a constant answer.

The results go to ``benchmarks/results/osmfish_spatial_heldout.json`` (with the machine) and,
with ``--update-card`` (the default), into the model's card (``c2s.json``: ``training``) and
run record (``metrics.held_out``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_spatial_model.py [--model assets/models/osmfish-spatial]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench_sentences import REPO, SHARED_DATA, machine

DATA = SHARED_DATA / "osmfish_sscortex" / "osmfish_sscortex.h5ad"
NICHE_KEY = "Region"
N_NEIGHBORS = 6  # as spatial_n_neighbors in configs/pretrain_osmfish_spatial.yaml
MAX_CELLS = 5  # as cells_per_example[1] in that config


def plain(value):
    """JSON fallback for the numpy values in metric tables."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def evaluate(model_dir: Path, data: Path, *, n_pairs: int, batch_size: int, seed: int) -> dict:
    """Every held-out metric of the spatial model and its baselines."""
    import numpy as np

    from c2s_engine.models import load_model
    from c2s_engine.readers import read
    from c2s_engine.tasks.spatial import (
        predict_niche,
        predict_same_neighborhood,
        spatial_neighbors,
    )
    from c2s_engine.training.evaluation import annotation_baselines, held_out_mask
    from c2s_engine.training.records import RECORD_FILENAME, RunRecord
    from c2s_engine.validation import prepare

    training = RunRecord.load(model_dir / RECORD_FILENAME)
    adata = read(str(data), backed=False)
    adata = adata[adata.obs["Valid"].astype(int) == 1].copy()  # the config's keep: {Valid: [1]}
    prepare(adata, organism="Mus musculus")
    scored, _ = held_out_mask(adata, data, training, "held-out")
    model = load_model(str(model_dir))
    regions = sorted(adata.obs[NICHE_KEY].astype(str).unique())
    truth = adata.obs[NICHE_KEY].astype(str).to_numpy()
    timings = {}

    stripe = adata[scored].copy()
    start = time.perf_counter()
    niche = predict_niche(stripe, model, labels=regions, true_key=NICHE_KEY,
                          batch_size=batch_size)
    timings["niche_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    baselines = annotation_baselines(adata, scored, NICHE_KEY, seed=seed)
    values, counts = np.unique(truth[~scored], return_counts=True)
    majority = values[counts.argmax()]
    baselines["majority_class"] = {
        "accuracy": float(np.mean(truth[scored] == majority)), "n_test": int(scored.sum()),
        "method": f"always the most frequent training region ({majority})"}
    timings["baselines_s"] = round(time.perf_counter() - start, 1)

    spatial_neighbors(stripe, n_neighbors=N_NEIGHBORS)  # neighbourhoods within the stripe
    start = time.perf_counter()
    same = predict_same_neighborhood(stripe, model, n_pairs=n_pairs, max_cells=MAX_CELLS,
                                     seed=seed, batch_size=batch_size)
    timings["same_neighborhood_s"] = round(time.perf_counter() - start, 1)
    prov = stripe.uns["c2s"]["spatial_same_neighborhood"]

    niche_metrics = {k: v for k, v in niche.metrics.items() if k != "confusion"}
    return json.loads(json.dumps({
        "model": str(model_dir), "data": str(data), "niche_key": NICHE_KEY,
        "held_out": training.split.get("held_out", {}), "n_held_out_cells": int(scored.sum()),
        "seed": seed, "candidates": regions,
        "niche_label": {"model": niche_metrics, "confusion": niche.metrics.get("confusion"),
                        "baselines": baselines},
        "same_neighborhood": {
            "model": {"accuracy": same.accuracy, "accuracy_positive": prov["accuracy_positive"],
                      "accuracy_negative": prov["accuracy_negative"],
                      "n_positive": prov["n_positive"], "n_negative": prov["n_negative"],
                      "n_neighbors": N_NEIGHBORS, "max_cells": MAX_CELLS},
            "baseline_constant_answer": {"accuracy": 0.5, "method": "balanced yes/no sets"}},
        "timings": timings,
    }, default=plain))


def summary(result: dict) -> dict:
    """The headline numbers (what the model card shows)."""
    niche = result["niche_label"]
    return {
        "n_held_out_cells": result["n_held_out_cells"],
        "niche_accuracy": niche["model"]["accuracy"],
        "niche_macro_f1": niche["model"]["macro_f1"],
        "niche_majority_class_accuracy": niche["baselines"]["majority_class"]["accuracy"],
        "niche_logistic_regression_accuracy":
            niche["baselines"]["logistic_regression"]["accuracy"],
        "niche_knn_pca_accuracy": niche["baselines"]["knn_pca"]["accuracy"],
        "same_neighborhood_accuracy": result["same_neighborhood"]["model"]["accuracy"],
        "same_neighborhood_baseline_accuracy": 0.5,
    }


def update_model_files(model_dir: Path, result: dict, command: str) -> None:
    """Write the held-out metrics into the model's card and run record."""
    from c2s_engine.models.card import CARD_FILENAME, ModelCard
    from c2s_engine.training.records import RECORD_FILENAME, RunRecord

    record = RunRecord.load(model_dir / RECORD_FILENAME)
    record.metrics.setdefault("held_out", {}).update(
        {"niche_label": result["niche_label"],
         "same_neighborhood": result["same_neighborhood"]})
    record.save(model_dir / RECORD_FILENAME)
    card_path = model_dir / CARD_FILENAME
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["name"] = model_dir.name  # the shipped folder's name, not the training run's
    split = record.split
    card["training"] = {
        "commands": ["c2s train pretrain --config configs/pretrain_osmfish_spatial.yaml",
                     "cp -r runs/osmfish_spatial assets/models/osmfish-spatial"],
        "evaluation_command": command,
        "data_source": "osmFISH mouse somatosensory cortex (Codeluppi et al. 2018), cells with "
                       "Valid == 1: ../shared/data/osmfish_sscortex/osmfish_sscortex.h5ad",
        "data": record.data,
        "split": {"method": split["method"], "held_out": split["held_out"],
                  "n_cells": split["n_cells"], "held_out_cells": split["test_cells"]},
        "metrics": summary(result),
    }
    ModelCard.from_dict(card, source=str(card_path))  # the card must stay loadable
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "assets" / "models" / "osmfish-spatial"))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--n-pairs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"
                                             / "osmfish_spatial_heldout.json"))
    parser.add_argument("--no-update-card", dest="update_card", action="store_false")
    args = parser.parse_args()

    import torch

    report = {"machine": {**machine(), "torch_threads": torch.get_num_threads()}}
    start = time.perf_counter()
    result = evaluate(Path(args.model), Path(args.data), n_pairs=args.n_pairs,
                      batch_size=args.batch_size, seed=args.seed)
    report.update(result)
    report["summary"] = summary(result)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.update_card:
        update_model_files(Path(args.model), result, " ".join(["python", *sys.argv]))
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
