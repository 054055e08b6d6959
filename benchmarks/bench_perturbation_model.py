"""Held-out evaluation of the kang-perturbation model: stage 1 alone and after GRPO, one run.

Every model was trained with stimulated CD14+ monocytes held out entirely (the split is read
from the first model's ``c2s_run.json``; every model must hold out the same cells). For each
model, :func:`c2s_engine.training.evaluation.evaluate_perturbation` turns every control CD14+
monocyte into a predicted IFN-beta-stimulated cell (answers sampled at temperature 1, the
model's own distribution; the ``<name>_tuned`` rows sample with the decoding chosen on a
validation cell type by ``tune_perturbation_decoding.py``: temperature ``--tuned-temperature``
and contrastive guidance against control cells of the other six types, weight
``--contrast-weight``; the ``<name>_greedy`` rows decode greedily; reverse transform) and
compares the predictions with the real held-out stimulated monocytes: MMD, scFID and
Wasserstein in a PCA fitted on the real cells, and Pearson r of the mean expression change from
control. The baseline, computed in the same call, adds to the same controls the mean change
(stimulated minus control) measured on the other six cell types.

A model answers with a ``top_k``-gene sentence (100 genes here), so its reconstructed cells
express only those genes, while the baseline keeps every gene. Two more rows put that
bottleneck in view: the baseline passed through the same sentences
(``baseline_mean_shift_top<k>``: its cells ranked, cut to ``top_k`` genes and reconstructed with
the same reverse transform), and the real held-out cells passed through them
(``real_top<k>``: the best any ``top_k``-gene generator could score).

The results go to ``benchmarks/results/kang_perturbation_heldout.json`` (with the machine) and,
with ``--update-card`` (the default), into the card (``c2s.json``: ``training``) and run record
(``metrics.held_out``) of the last model, the one that is shipped.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_perturbation_model.py \\
        --models stage1+grpo=runs/grpo_kang stage1=assets/models/kang-perturbation
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench_sentences import REPO, SHARED_DATA, machine

DATA = SHARED_DATA / "kang_pbmc_ifnb" / "kang_pbmc_ifnb.h5ad"
SETTINGS = {"label_key": "cell_type", "condition_key": "condition", "control_value": "control"}
CONDITION = "stimulated"
METRICS = ("mmd", "scfid", "wasserstein")
TEMPERATURE = 1.0  # sampling as trained: the compared populations keep their spread
#: Chosen on the validation model's held-out FCGR3A+ monocytes, never on the test cells
#: (benchmarks/results/kang_decoding_validation_contrast_temperature_5seeds.json).
TUNED = {"temperature": 0.6, "contrast_weight": 1.0}


def plain(value):
    """JSON fallback for the numpy arrays in metric tables."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def headline(entry: dict) -> dict:
    """MMD, scFID, Wasserstein and Pearson r of one prediction (model or baseline)."""
    return {**{name: entry["summary"][name] for name in METRICS},
            "pearson_delta": entry["pearson_delta"]}


def through_sentences(cells, controls, top_k: int, seed: int):
    """``cells`` as ``top_k``-gene sentences turned back into expression, as a model's answers."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from anndata import AnnData

    from c2s_engine.metrics import cell_matrix
    from c2s_engine.sentences import compute_sentences, get_sentences
    from c2s_engine.tasks.perturb import reconstructed_cells

    ranked = AnnData(X=sp.csr_matrix(cell_matrix(cells), dtype=np.float32),
                     obs=cells.obs.copy(), var=pd.DataFrame(index=cells.var_names.copy()))
    # X already holds C2S-convention values: record it so ranking reads X as it is.
    ranked.uns["c2s"] = {"normalization": {**controls.uns["c2s"]["normalization"],
                                           "matrix": "X"}}
    compute_sentences(ranked, top_k=top_k, seed=seed)
    return reconstructed_cells(controls, get_sentences(ranked), ranked.obs, top_k)


def bottleneck_rows(adata, scored, *, top_k: int, seed: int) -> dict:
    """The baseline and the real held-out cells through ``top_k``-gene sentences (see above)."""
    import numpy as np
    from anndata import AnnData

    from c2s_engine.metrics import (
        cell_matrix,
        compare_distributions,
        mean_expression,
        pearson_delta,
    )
    from c2s_engine.sentences import compute_sentences

    label, condition = SETTINGS["label_key"], adata.obs[SETTINGS["condition_key"]].astype(str)
    labels = adata.obs[label].astype(str).to_numpy()
    is_control = (condition == SETTINGS["control_value"]).to_numpy()
    real_mask = scored & (condition == CONDITION).to_numpy()
    held_types = np.isin(labels, sorted(set(labels[real_mask])))
    controls, real = adata[is_control & held_types].copy(), adata[real_mask].copy()
    compute_sentences(controls, top_k=top_k)  # the reverse transform is fitted on their ranks
    shift = (mean_expression(adata[~scored & ~held_types & ~is_control])
             - mean_expression(adata[~scored & ~held_types & is_control]))
    values = cell_matrix(controls)
    values = values.toarray() if hasattr(values, "toarray") else np.asarray(values)
    shifted = AnnData(X=np.maximum(values + shift.reindex(controls.var_names).to_numpy(), 0.0),
                      obs=controls.obs.copy(), var=controls.var.copy())
    rows = {}
    for name, cells in ((f"baseline_mean_shift_top{top_k}", shifted),
                        (f"real_top{top_k}", real)):
        predicted = through_sentences(cells, controls, top_k, seed)
        rows[name] = {**compare_distributions(real, predicted, condition_key=label).to_dict(),
                      "pearson_delta": pearson_delta(controls, real, predicted)}
    return rows


def evaluate(models: dict[str, Path], data: Path, *, batch_size: int, seed: int,
             tuned: dict[str, float]) -> dict:
    """Every held-out metric of each model, and of the mean-shift baseline."""
    from c2s_engine.models import load_model
    from c2s_engine.readers import read
    from c2s_engine.training.evaluation import evaluate_perturbation, held_out_mask
    from c2s_engine.training.records import RECORD_FILENAME, RunRecord
    from c2s_engine.validation import prepare

    adata = read(str(data), backed=False)
    prepare(adata)
    records = {name: RunRecord.load(folder / RECORD_FILENAME) for name, folder in models.items()}
    first = next(iter(records.values()))
    scored, _ = held_out_mask(adata, data, first, "held-out")
    for name, record in records.items():
        other, _ = held_out_mask(adata, data, record, "held-out")
        if (other != scored).any():
            raise SystemExit(f"{name} held out other cells than {next(iter(records))}")

    results, timings, decoding, baseline = {}, {}, {}, None
    untuned = {"temperature": TEMPERATURE, "contrast_weight": 0.0}
    for name, folder in models.items():
        names = records[name].config.get("data", {}).get("perturbation_names", {})
        model = load_model(str(folder))
        rows = [(name, True, untuned), (f"{name}_tuned", True, tuned),
                (f"{name}_greedy", False, untuned)]
        for row, do_sample, decoding_options in rows:
            start = time.perf_counter()
            found = evaluate_perturbation(adata, scored, model, names=names, perturbation=None,
                                          seed=seed, batch_size=batch_size,
                                          do_sample=do_sample, **decoding_options, **SETTINGS)
            decoding[row] = found["decoding"]
            timings[f"{row}_s"] = round(time.perf_counter() - start, 1)
            entry = found["conditions"][CONDITION]
            results[row] = entry["model"]
        baseline = entry["baseline_mean_shift"]  # the same controls and shift for every model
        cell_types, n_real, n_controls = entry["cell_types"], entry["n_real"], entry["n_controls"]
    top_k = int(load_model(str(next(iter(models.values())))).card.top_k)
    extra = bottleneck_rows(adata, scored, top_k=top_k, seed=seed)
    details = {**results, "baseline_mean_shift": baseline, **extra}
    table = {name: headline(entry) for name, entry in details.items()}
    lower_is_better = {name: {metric: bool(table[name][metric] < table["baseline_mean_shift"]
                                           [metric]) for metric in METRICS}
                       for name in results}
    for name in results:
        lower_is_better[name]["pearson_delta"] = bool(
            table[name]["pearson_delta"] > table["baseline_mean_shift"]["pearson_delta"])
    return json.loads(json.dumps({
        "models": {name: str(folder) for name, folder in models.items()}, "data": str(data),
        **SETTINGS, "condition": CONDITION, "held_out_cell_types": cell_types,
        "n_held_out_cells": n_real, "n_controls_predicted": n_controls, "seed": seed,
        "decoding": decoding,
        "tuned_decoding": tuned, "top_k": top_k, "table": table,
        "beats_baseline": lower_is_better, "details": details, "timings": timings,
    }, default=plain))


def update_model_files(model_dir: Path, result: dict, command: str) -> None:
    """Write the held-out metrics into the shipped model's card and run record."""
    from c2s_engine.models.card import CARD_FILENAME, ModelCard
    from c2s_engine.training.records import RECORD_FILENAME, RunRecord

    record = RunRecord.load(model_dir / RECORD_FILENAME)
    record.metrics.setdefault("held_out", {})["perturb"] = {
        "table": result["table"], "details": result["details"]}
    record.save(model_dir / RECORD_FILENAME)
    card_path = model_dir / CARD_FILENAME
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["name"] = model_dir.name  # the shipped folder's name, not the training run's
    split = record.split
    card["training"] = {
        "commands": [
            "c2s train pretrain --config configs/pretrain_kang_perturbation.yaml",
            "cp -r runs/pretrain_kang assets/models/kang-perturbation"],
        "compared_with": "c2s train grpo --config configs/grpo_kang_perturbation.yaml "
                         "(GRPO on this model, benchmarked beside it; not shipped)",
        "evaluation_command": command,
        "data_source": "Kang et al. 2018 IFN-beta-stimulated PBMCs (GEO GSE96583), the scGen "
                       "'valid' split: ../shared/data/kang_pbmc_ifnb/kang_pbmc_ifnb.h5ad",
        "data": record.data,
        # What the perturbation page offers as the perturbation's name (it was trained so).
        "perturbation_names": record.config.get("data", {}).get("perturbation_names", {}),
        "split": {"method": split["method"], "held_out": split["held_out"],
                  "n_cells": split["n_cells"], "held_out_cells": split["test_cells"],
                  "notes": split["notes"]},
        "metrics": {"held_out_cell_type": "CD14+Mono (stimulated)",
                    "n_held_out_cells": result["n_held_out_cells"], **result["table"]},
        # ModelCard.decoding: what the perturbation page starts from.
        "decoding": {"perturbation_response": {
            **result["tuned_decoding"], "do_sample": True,
            "contrast": "control cells of other cell types",
            "chosen_on": "held-out stimulated FCGR3A+Mono of a validation model "
                         "(benchmarks/tune_perturbation_decoding.py)"}},
    }
    ModelCard.from_dict(card, source=str(card_path))  # the card must stay loadable
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, metavar="NAME=FOLDER",
                        help="models to compare, e.g. stage1=runs/pretrain_kang "
                             "grpo=assets/models/kang-perturbation (the last is shipped)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tuned-temperature", type=float, default=TUNED["temperature"],
                        help="temperature of the <name>_tuned rows")
    parser.add_argument("--contrast-weight", type=float, default=TUNED["contrast_weight"],
                        help="contrastive guidance weight of the <name>_tuned rows")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"
                                             / "kang_perturbation_heldout.json"))
    parser.add_argument("--no-update-card", dest="update_card", action="store_false")
    args = parser.parse_args()
    models = {name: Path(folder) for name, folder in
              (item.split("=", 1) for item in args.models)}

    import torch

    report = {"machine": {**machine(), "torch_threads": torch.get_num_threads()}}
    start = time.perf_counter()
    tuned = {"temperature": args.tuned_temperature, "contrast_weight": args.contrast_weight}
    result = evaluate(models, Path(args.data), batch_size=args.batch_size, seed=args.seed,
                      tuned=tuned)
    report.update(result)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.update_card:
        update_model_files(list(models.values())[-1], result, " ".join(["python", *sys.argv]))
    print(json.dumps({"table": result["table"], "beats_baseline": result["beats_baseline"]},
                     indent=2))


if __name__ == "__main__":
    main()
