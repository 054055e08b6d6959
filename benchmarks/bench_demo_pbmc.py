"""Held-out evaluation of the PBMC demo model, every figure from one run.

On the cells the training run held out (read from the model's ``c2s_run.json``), this scores:

* annotation by the model: label scoring over the 10 ``bulk_labels`` candidates (accuracy,
  macro-F1) and the accuracy of its free-text answers; and, with ``--tie-orders N`` (default
  4), the same scoring with probabilities averaged over N orders of each cell's equally
  expressed genes (``annotate(tie_orders=N)``); several values (``--tie-orders 4 8 16``) make
  a sweep, the first stays the headline;
* the same label scoring on the training cells, to tell a model that does not fit its own
  training labels from one that fits them and does not carry over;
* the exact McNemar test of the model against each baseline on the same cells
  (``paired_tests``): how likely a gap of that many cells is by chance;
* the two classical baselines fitted on the training cells
  (:func:`c2s_engine.training.evaluation.annotation_baselines`): CellTypist's logistic
  regression and kNN on PCA, both on all genes; and, to show how much of the label the model's
  input carries, the same logistic regression on the model's top-K cell sentences;
* conditional generation: as many cells generated per held-out cell type as it has held-out
  cells, scFID/MMD/Wasserstein against the real held-out cells, next to the same metrics
  between two random halves of the real held-out cells.

The results go to ``benchmarks/results/demo_pbmc_heldout.json`` (with the machine) and, with
``--update-card`` (the default), into the model's ``c2s.json`` (``training``: command, data
source, split with every held-out cell name, metrics) and ``c2s_run.json``
(``metrics.held_out``).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_demo_pbmc.py [--model assets/models/demo]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_sentences import REPO, SHARED_DATA, machine

DATA = SHARED_DATA / "pbmc68k_with_counts" / "pbmc68k_reduced_with_counts.h5ad"
LABEL_KEY = "bulk_labels"


def evaluate(model_dir: Path, data: Path, *, batch_size: int, seed: int,
             tie_orders: tuple[int, ...] = (4,), generation: bool = True) -> dict:
    """Every held-out metric of the demo model (see the module docstring); without
    ``generation`` (models trained for annotation only) the generation metrics are None.
    The first of ``tie_orders`` (above 1) is ``annotate_tie_averaged``; all of them make
    ``tie_order_sweep``."""
    import numpy as np

    from c2s_engine.models import load_model
    from c2s_engine.readers import read
    from c2s_engine.training.evaluation import (
        annotation_baselines,
        evaluate_annotation,
        evaluate_generation,
        held_out_mask,
        paired_with_baselines,
    )
    from c2s_engine.training.records import RECORD_FILENAME, RunRecord
    from c2s_engine.validation import prepare

    training = RunRecord.load(model_dir / RECORD_FILENAME)
    adata = read(str(data), backed=False)
    prepare(adata)
    scored, _ = held_out_mask(adata, data, training, "held-out")
    model = load_model(str(model_dir))
    timings = {}

    start = time.perf_counter()
    annotation = evaluate_annotation(adata, scored, model, LABEL_KEY, batch_size, free_text=True)
    timings["annotation_s"] = round(time.perf_counter() - start, 1)
    sweep = {}
    for orders in (n for n in tie_orders if n > 1):
        start = time.perf_counter()
        sweep[orders] = evaluate_annotation(adata, scored, model, LABEL_KEY, batch_size,
                                            tie_orders=orders)
        timings[f"annotation_tie_orders_{orders}_s"] = round(time.perf_counter() - start, 1)
    averaged = next(iter(sweep.values()), None)
    start = time.perf_counter()
    fitted = evaluate_annotation(adata, ~scored, model, LABEL_KEY, batch_size)
    timings["annotation_training_cells_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    baselines = annotation_baselines(adata, scored, LABEL_KEY, seed=seed,
                                     sentence_top_k=model.card.top_k)
    timings["baselines_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    generated = None
    if generation:
        generated = evaluate_generation(adata, scored, model, LABEL_KEY, n=None, seed=seed,
                                        batch_size=batch_size)
        timings["generation_s"] = round(time.perf_counter() - start, 1)

    beats = {name: bool(annotation["accuracy"] >= baselines[name]["accuracy"])
             for name in ("logistic_regression", "knn_pca")}
    paired = {"annotate": paired_with_baselines(adata, LABEL_KEY, annotation, baselines)}
    if averaged:
        paired["annotate_tie_averaged"] = paired_with_baselines(adata, LABEL_KEY, averaged,
                                                                baselines)
    return {
        "model": str(model_dir), "data": str(data), "label_key": LABEL_KEY,
        "n_held_out_cells": int(np.sum(scored)), "seed": seed,
        "annotate": annotation, "annotate_tie_averaged": averaged,
        "tie_order_sweep": {str(n): {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
                            for n, r in sweep.items()},
        "annotate_training_cells": fitted, "baselines": baselines,
        "goal_accuracy_at_or_above_baselines": beats, "paired_tests": paired,
        "generate": generated, "timings": timings,
    }


def summary(result: dict) -> dict:
    """The headline numbers (what the model card shows)."""
    generate = result["generate"]
    averaged = result.get("annotate_tie_averaged")
    generated = {
        "scfid_generated_vs_real": generate["generated_vs_real"]["summary"]["scfid"],
        "scfid_real_vs_real_halves": generate["real_vs_real"]["summary"]["scfid"],
        "mmd_generated_vs_real": generate["generated_vs_real"]["summary"]["mmd"],
        "mmd_real_vs_real_halves": generate["real_vs_real"]["summary"]["mmd"],
    } if generate else {}
    return {
        "n_held_out_cells": result["n_held_out_cells"],
        "annotation_accuracy": result["annotate"]["accuracy"],
        "annotation_macro_f1": result["annotate"]["macro_f1"],
        "annotation_free_text_accuracy": result["annotate"]["free_text_accuracy"],
        **({"annotation_tie_averaged_accuracy": averaged["accuracy"],
            "annotation_tie_averaged_macro_f1": averaged["macro_f1"],
            "annotation_tie_orders": averaged["tie_orders"]} if averaged else {}),
        "annotation_training_cells_accuracy": result["annotate_training_cells"]["accuracy"],
        "logistic_regression_accuracy": result["baselines"]["logistic_regression"]["accuracy"],
        "knn_pca_accuracy": result["baselines"]["knn_pca"]["accuracy"],
        "logistic_regression_on_sentences_accuracy":
            result["baselines"]["logistic_regression_on_sentences"]["accuracy"],
        "mcnemar_p_vs_logistic_regression":
            result["paired_tests"]["annotate"]["logistic_regression"]["p_value"],
        "mcnemar_p_vs_knn_pca": result["paired_tests"]["annotate"]["knn_pca"]["p_value"],
        **generated,
    }


def update_model_files(model_dir: Path, result: dict, command: str) -> None:
    """Write the held-out metrics into the model's card and run record."""
    from c2s_engine.models.card import CARD_FILENAME, ModelCard
    from c2s_engine.training.records import RECORD_FILENAME, RunRecord

    record = RunRecord.load(model_dir / RECORD_FILENAME)
    record.metrics.setdefault("held_out", {}).update(
        {"annotate": result["annotate"],
         "annotate_tie_averaged": result.get("annotate_tie_averaged"),
         "annotate_training_cells": result["annotate_training_cells"],
         "baselines": result["baselines"],
         "paired_tests": result["paired_tests"],
         "generate": result["generate"]})
    record.save(model_dir / RECORD_FILENAME)
    card_path = model_dir / CARD_FILENAME
    card = json.loads(card_path.read_text(encoding="utf-8"))
    split = record.split
    card["name"] = model_dir.name  # the shipped folder's name, not the training run's
    recipe = "c2s train pretrain --config configs/pretrain_pbmc_demo.yaml"
    if record.kind == "sft":  # the shipped demo: stage 1, then annotation fine-tuning
        recipe += " && c2s train sft --config configs/sft_pbmc_demo.yaml"
    card["training"] = {
        # The committed recipe; the run record keeps the command as it ran (its config is the
        # recipe's, whatever file it was read from).
        "command": recipe,
        "evaluation_command": command,
        "data_source": "scanpy.datasets.pbmc68k_reduced() (700 PBMCs, Zheng et al. 2017) "
                       "with integer counts: ../shared/data/pbmc68k_with_counts/"
                       "pbmc68k_reduced_with_counts.h5ad",
        "data": record.data,
        "split": {"method": split["method"], "seed": split["seed"],
                  "test_fraction": split["test_fraction"], "stratified_by": LABEL_KEY,
                  "n_cells": split["n_cells"], "held_out_cells": split["test_cells"]},
        "metrics": summary(result),
    }
    ModelCard.from_dict(card, source=str(card_path))  # the card must stay loadable
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def _plain(value):
    """numpy arrays and scalars (confusion matrices, counts) as JSON lists and numbers."""
    import numpy as np

    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "assets" / "models" / "demo"))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tie-orders", type=int, nargs="+", default=[4],
                        help="also score with label probabilities averaged over this many tie "
                             "orders (1: skip); several values make a sweep, the first is "
                             "the headline")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"
                                             / "demo_pbmc_heldout.json"))
    parser.add_argument("--no-update-card", dest="update_card", action="store_false")
    parser.add_argument("--no-generation", dest="generation", action="store_false",
                        help="skip the generation metrics (a model trained for annotation only)")
    args = parser.parse_args()

    import torch

    report = {"machine": {**machine(), "torch_threads": torch.get_num_threads()}}
    start = time.perf_counter()
    result = evaluate(Path(args.model), Path(args.data), batch_size=args.batch_size,
                      seed=args.seed, tie_orders=tuple(args.tie_orders),
                      generation=args.generation)
    report.update(result)
    report["summary"] = summary(result)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    report["machine"]["load_average_end"] = list(__import__("os").getloadavg())
    print(json.dumps(report["summary"], indent=2))
    report = json.loads(json.dumps(report, default=_plain))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.update_card:
        update_model_files(Path(args.model), report, " ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
