"""Choose the kang-perturbation model's decoding on a validation cell type, not on its test cells.

The shipped model holds out the stimulated CD14+ monocytes; choosing its sampling temperature
or contrastive guidance weight (``predict_perturbation(contrast_weight=...)``, against control
cells of the other cell types) by its score on them would make that score optimistic. Instead
a validation model (``configs/pretrain_kang_perturbation_validation.yaml``: the same recipe with the
stimulated FCGR3A+ monocytes held out as well) is decoded with every setting of a grid, and
scored on its held-out FCGR3A+ monocytes exactly as the shipped model is scored on CD14+
monocytes (:func:`c2s_engine.training.evaluation.evaluate_perturbation`). The stimulated
CD14+ monocytes are removed from the data before anything else, so they are neither predicted
nor part of the baseline's mean shift: the shipped model's test cells play no part.

Each setting is scored with several sampling seeds (their mean is used). The chosen setting
has the smallest sum of its ranks over the four metrics (MMD, scFID, Wasserstein: lower is
better; Pearson r of the mean change: higher is better); ties go to the temperature nearer 1,
then to the smaller weight.
The grid, every score (per seed too), the baseline and the choice go to
``benchmarks/results/kang_decoding_validation_temperature.json``. Compare the per-seed scores
before taking a choice: a difference smaller than the spread between seeds is noise.

``benchmarks/results/kang_decoding_validation.json`` is this protocol applied at commit
4df0e6f to an input-gene logit bias (each control cell's own genes favoured while decoding):
every bias was worse than none, and the option was removed.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/tune_perturbation_decoding.py \\
        --model runs/pretrain_kang_val_fcgr3a
    OMP_NUM_THREADS=2 python benchmarks/tune_perturbation_decoding.py \\
        --model runs/pretrain_kang_val_fcgr3a --temperatures 1 \\
        --contrast-weights 0 0.25 0.5 0.75 1 2 \\
        --out benchmarks/results/kang_decoding_validation_contrast.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench_perturbation_model import CONDITION, DATA, SETTINGS, headline, plain
from bench_perturbation_model import METRICS as DISTANCES
from bench_sentences import REPO, machine

METRICS = (*DISTANCES, "pearson_delta")  # the keys of headline()


def rank_sum(table: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per setting, the sum over :data:`METRICS` of its rank among the settings (1 = best)."""
    import pandas as pd

    frame = pd.DataFrame(table).T
    ranks = sum(frame[m].rank(ascending=m != "pearson_delta", method="average") for m in METRICS)
    return {name: float(value) for name, value in ranks.items()}


def tune(model_dir: Path, data: Path, *, validate: list[str], exclude: list[str],
         temperatures: list[float], weights: list[float], seeds: list[int],
         batch_size: int) -> dict:
    import numpy as np

    from c2s_engine.models import load_model
    from c2s_engine.readers import read
    from c2s_engine.training.evaluation import evaluate_perturbation, held_out_mask
    from c2s_engine.training.records import RECORD_FILENAME, RunRecord
    from c2s_engine.validation import prepare

    adata = read(str(data), backed=False)
    labels = adata.obs[SETTINGS["label_key"]].astype(str)
    test_cells = (labels.isin(exclude)
                  & (adata.obs[SETTINGS["condition_key"]].astype(str) == CONDITION)).to_numpy()
    adata = adata[~test_cells].copy()
    prepare(adata)
    record = RunRecord.load(model_dir / RECORD_FILENAME)
    held, _ = held_out_mask(adata, data, record, "held-out")
    scored = held & adata.obs[SETTINGS["label_key"]].astype(str).isin(validate).to_numpy()
    if not scored.any():
        raise SystemExit(f"the model held out no stimulated cell of {validate}")
    names = record.config.get("data", {}).get("perturbation_names", {})
    model = load_model(str(model_dir))

    settings = {(f"T{t:g}" + (f"_w{w:g}" if w else "")): {"temperature": t, "contrast_weight": w}
                for t in temperatures for w in weights}
    table, per_seed, baseline, timings = {}, {}, None, {}
    for name, setting in settings.items():
        start = time.perf_counter()
        runs = []
        for seed in seeds:
            found = evaluate_perturbation(adata, scored, model, names=names, perturbation=None,
                                          seed=seed, batch_size=batch_size, do_sample=True,
                                          **setting, **SETTINGS)
            entry = found["conditions"][CONDITION]
            runs.append(headline(entry["model"]))
            baseline = headline(entry["baseline_mean_shift"])
        timings[name] = round(time.perf_counter() - start, 1)
        per_seed[name] = runs
        table[name] = {m: float(np.mean([r[m] for r in runs])) for m in METRICS}
        print(name, {m: round(v, 3) for m, v in table[name].items()}, flush=True)

    ranks = rank_sum(table)
    chosen = min(ranks, key=lambda n: (ranks[n], abs(settings[n]["temperature"] - 1.0),
                                       settings[n]["contrast_weight"]))
    return json.loads(json.dumps({
        "model": str(model_dir), "data": str(data), **SETTINGS, "condition": CONDITION,
        "validation_cell_types": validate, "removed_stimulated_cell_types": exclude,
        "n_validation_cells": int(scored.sum()), "seeds": seeds,
        "grid": {"temperature": temperatures, "contrast_weight": weights},
        "table": table, "rank_sum": ranks, "baseline_mean_shift": baseline,
        "chosen": {"name": chosen, **settings[chosen]}, "per_seed": per_seed,
        "timings_s": timings,
    }, default=plain))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the validation model's folder")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--validate", nargs="+", default=["FCGR3A+Mono"],
                        help="held-out cell types the settings are scored on")
    parser.add_argument("--exclude", nargs="+", default=["CD14+Mono"],
                        help="cell types whose stimulated cells are removed first (the "
                             "shipped model's test cells)")
    parser.add_argument("--temperatures", nargs="+", type=float,
                        default=[0.7, 0.85, 1.0, 1.15])
    parser.add_argument("--contrast-weights", nargs="+", type=float, default=[0.0],
                        help="contrastive guidance weights (0: off) against controls of the "
                             "other cell types")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"
                                             / "kang_decoding_validation_temperature.json"))
    args = parser.parse_args()

    import torch

    report = {"machine": {**machine(), "torch_threads": torch.get_num_threads()}}
    start = time.perf_counter()
    report.update(tune(Path(args.model), Path(args.data), validate=args.validate,
                       exclude=args.exclude, temperatures=args.temperatures,
                       weights=args.contrast_weights, seeds=args.seeds,
                       batch_size=args.batch_size))
    report["wall_s"] = round(time.perf_counter() - start, 1)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"chosen": report["chosen"], "baseline": report["baseline_mean_shift"]},
                     indent=2))


if __name__ == "__main__":
    main()
