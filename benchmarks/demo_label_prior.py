"""Would contextual calibration help the demo's annotation? A check of its premise.

Contextual calibration (Zhao et al. 2021) divides each candidate's probability by the
probability the model gives it after a content-free input, to remove a bias towards some labels
that does not depend on the cell. It has no parameter to tune, but it rests on the content-free
prior being a fair picture of that bias. This script measures the prior of the demo model
after the annotation prompt with an empty cell sentence and with ``N/A`` in its place, and, on
the demo's held-out cells, how many predictions calibration would change (both without the true
labels) and, for the record, the accuracy it would give.

    OMP_NUM_THREADS=2 python benchmarks/demo_label_prior.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bench_sentences import REPO, SHARED_DATA, machine

DATA = SHARED_DATA / "pbmc68k_with_counts" / "pbmc68k_reduced_with_counts.h5ad"
CONTENT_FREE = {"empty sentence": "", "N/A": "N/A"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "assets" / "models" / "demo"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"
                                             / "demo_label_prior.json"))
    args = parser.parse_args()

    from c2s_engine.inference.scoring import score_labels
    from c2s_engine.models import load_model
    from c2s_engine.prompts import get_template
    from c2s_engine.readers import read
    from c2s_engine.tasks.annotate import annotate
    from c2s_engine.training.evaluation import held_out_mask
    from c2s_engine.training.records import RECORD_FILENAME, RunRecord
    from c2s_engine.validation import prepare

    adata = read(str(DATA), backed=False)
    prepare(adata)
    model = load_model(args.model)
    scored, _ = held_out_mask(adata, DATA, RunRecord.load(Path(args.model) / RECORD_FILENAME),
                              "held-out")
    candidates = sorted(set(adata.obs["bulk_labels"].astype(str)))
    cells = adata[scored].copy()
    found = annotate(cells, model, labels=candidates, mode="score", cache=False)
    probabilities, truth = found.probabilities, cells.obs["bulk_labels"].astype(str).to_numpy()
    plain = probabilities.argmax(1)
    template = get_template("cell_type_prediction")
    rows = {}
    for name, sentence in CONTENT_FREE.items():
        prompt = template.format_prompt(num_genes=len(sentence.split()), organism="Homo sapiens",
                                        cell_sentence=sentence)
        prior = score_labels(model.model, model.tokenizer, [prompt], candidates).confidence[0]
        calibrated = (probabilities / prior).argmax(1)
        rows[name] = {"prompt": prompt, "prior": dict(zip(candidates, prior.round(4).tolist(), strict=True)),
                      "n_predictions_changed": int((calibrated != plain).sum()),
                      "accuracy": float((np.asarray(candidates)[calibrated] == truth).mean())}
    result = {"machine": machine(), "model": args.model, "data": str(DATA),
              "n_held_out_cells": int(scored.sum()),
              "accuracy_uncalibrated": float((np.asarray(candidates)[plain] == truth).mean()),
              "mean_probability_held_out": dict(zip(
                  candidates, probabilities.mean(0).round(4).tolist(), strict=True)),
              "content_free": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
