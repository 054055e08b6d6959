"""Benchmark of the reverse transform's fidelity on real data (C2S paper: R^2 = 0.85).

For every real dataset in ../shared/data, cell sentences are computed from the C2S-convention
expression (the normalisation layer picks raw counts, a counts layer or converts log data),
``expr ~ slope * log10(1 + rank) + intercept`` is fitted on them, and the round trip
sentences -> strings -> :func:`c2s_engine.reverse.reconstruct` is scored against the real
expression at the genes each sentence names (:func:`c2s_engine.reverse.reconstruction_r2`).
Sentence lengths: 100 and 200 genes (what the released models read) and full length (every
expressed gene, as in the paper's figure).

Usage::

    python benchmarks/bench_reverse.py [--out benchmarks/results/bench_reverse.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_sentences import REPO, SHARED_DATA, machine, peak_rss_mb

DATASETS = [
    "baron_mouse_pancreas/baron_mouse1_pancreas.h5ad",
    "kang_pbmc_ifnb/kang_pbmc_ifnb.h5ad",
    "pbmc68k_with_counts/pbmc68k_reduced_with_counts.h5ad",
    "mouse10x_ensembl/mouse10x_10k_subset_ensembl.h5ad",
    "osmfish_sscortex/osmfish_sscortex.h5ad",
]
LENGTHS = (100, 200, "full")


def measure(relpath: str) -> dict:
    import anndata as ad

    from c2s_engine.normalization import normalize
    from c2s_engine.reverse import fit_reverse, reconstruction_r2
    from c2s_engine.sentences import compute_sentences

    adata = ad.read_h5ad(SHARED_DATA / relpath)
    normalize(adata)  # as the product does: records which matrix and which steps were used
    result: dict = {"dataset": relpath, "cells": adata.n_obs, "genes": adata.n_vars, "fits": []}
    for length in LENGTHS:
        top_k = adata.n_vars if length == "full" else length
        t0 = time.perf_counter()
        compute_sentences(adata, top_k=top_k, seed=0)
        fit = fit_reverse(adata)
        r2 = reconstruction_r2(adata)
        result["fits"].append(
            {
                "sentence_length": length,
                "top_k": top_k,
                "slope": round(fit.slope, 5),
                "intercept": round(fit.intercept, 5),
                "fit_r2": round(fit.r2, 4),
                "round_trip_r2": round(r2, 4),
                "n_points": fit.n_points,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        print(relpath, json.dumps(result["fits"][-1]))
    record = adata.uns["c2s"]["normalization"]
    result["normalization"] = {"source": record["source"], "steps": list(record["steps"])}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/bench_reverse.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))  # the engine

    started = time.perf_counter()
    report: dict = {"machine": machine(), "paper_r2": 0.85, "datasets": []}
    for relpath in DATASETS:
        if (SHARED_DATA / relpath).exists():
            report["datasets"].append(measure(relpath))
        else:
            print(f"skipped (not found): {SHARED_DATA / relpath}")
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} in {report['total_seconds']} s")


if __name__ == "__main__":
    main()
