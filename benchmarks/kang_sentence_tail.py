"""Is the kang model held back by its 100-gene sentences? The real cells' ceiling, two ways.

A kang-perturbation answer names 100 genes; the reverse transform gives every other gene 0.
Passing the real held-out stimulated CD14+ monocytes through the same 100-gene sentences shows
the best any 100-gene generator could score (``real_top100``, also a row of
``bench_perturbation_model.py``). ``real_top100_control_tail`` fills each sentence's missing
genes from a random control monocyte instead (capped below the sentence's lowest level), the
most a "carry the unpredicted genes over from the input cell" rule could add. If the two were
far apart, the zeros would be worth replacing; they are not (see the JSON).

    OMP_NUM_THREADS=2 python benchmarks/kang_sentence_tail.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from bench_perturbation_model import DATA, headline, through_sentences
from bench_sentences import REPO, machine

OUT = REPO / "benchmarks" / "results" / "kang_sentence_tail.json"
TOP_K = 100


def main() -> None:
    import pandas as pd
    from anndata import AnnData

    from c2s_engine.metrics import cell_matrix, compare_distributions, pearson_delta
    from c2s_engine.readers import read
    from c2s_engine.sentences import compute_sentences
    from c2s_engine.validation import prepare

    adata = read(str(DATA), backed=False)
    prepare(adata)
    cell_type = adata.obs["cell_type"].astype(str).to_numpy()
    condition = adata.obs["condition"].astype(str).to_numpy()
    monocyte = cell_type == "CD14+Mono"
    real = adata[monocyte & (condition == "stimulated")].copy()
    controls = adata[monocyte & (condition == "control")].copy()
    compute_sentences(controls, top_k=TOP_K)  # the reverse transform is fitted on their ranks

    def dense(cells) -> np.ndarray:
        values = cell_matrix(cells)
        return values.toarray() if hasattr(values, "toarray") else np.asarray(values)

    top = through_sentences(real, controls, TOP_K, 0)
    sentence, control = dense(top), dense(controls)
    donors = np.random.default_rng(0).integers(0, control.shape[0], sentence.shape[0])
    filled = sentence.copy()
    for row, donor in enumerate(donors):
        missing = sentence[row] == 0
        lowest = sentence[row][~missing].min() if (~missing).any() else np.inf
        filled[row, missing] = np.minimum(control[donor, missing], lowest)
    tail = AnnData(X=filled, obs=top.obs.copy(), var=pd.DataFrame(index=controls.var_names))

    rows = {}
    for name, cells in ((f"real_top{TOP_K}", top), (f"real_top{TOP_K}_control_tail", tail)):
        cells.obs["cell_type"] = "CD14+Mono"
        rows[name] = headline({
            **compare_distributions(real, cells, condition_key="cell_type").to_dict(),
            "pearson_delta": pearson_delta(controls, real, cells)})
    result = {"machine": machine(), "data": str(DATA), "n_real": real.n_obs,
              "n_controls": controls.n_obs, "top_k": TOP_K, "table": rows}
    Path(OUT).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
