"""One reference-package measurement, run INSIDE the reference venv by bench_inference_cpu.py.

It drives ``cell2sentence==1.2.0`` through its public API only (``CSData``, ``CSModel`` and the
task functions of ``cell2sentence.tasks``); none of its code is copied here (CC BY-NC-ND).

Tasks (``--task``):

- ``annotate``: ``tasks.predict_cell_types_of_data`` (one ``generate`` call per cell, its
  randomly chosen cell_type_prediction prompts, ``n_genes`` genes), ``max_num_tokens`` new tokens.
- ``embed``: ``tasks.embed_cells`` (batches of ``--batch-size`` of the same prompts, last hidden
  layer averaged over every position, padding included, as the package does).
- ``generate``: ``tasks.generate_cells_conditioned_on_cell_type`` with the cells' own labels
  (batches of ``--batch-size``; the package loads the weights in bfloat16 for this task).

Only the task call is timed. Building the arrow dataset (the package's sentence conversion) and
``CSModel`` (which copies the checkpoint into its save folder) are timed separately. The
tokenizer is wrapped in a pass-through proxy that counts the prompt tokens each call encodes
(real and padded), so the caller can turn times into FLOP/s.

Usage (from bench_inference_cpu.py)::

    /tmp/c2s_reference_venv/bin/python benchmarks/reference_inference.py --task annotate \\
        --model DIR --data CELLS.h5ad --label-column cell_type --n-genes 100 \\
        --max-new-tokens 16 --batch-size 8 --threads 2 --workdir TMP --out RESULT.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


class CountingTokenizer:
    """Pass-through proxy of a tokenizer that counts the tokens it encodes and pads.

    ``real_tokens`` gets one entry per encoded text (padding excluded); ``padded_tokens`` sums
    batch x padded length of every padded batch (``padding=...`` calls and ``pad``). The C2S
    Studio side of the benchmark wraps its tokenizer in the same proxy.
    """

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.real_tokens: list[int] = []
        self.padded_tokens = 0

    def _count_padded(self, encoded) -> None:
        mask = encoded["attention_mask"]
        self.padded_tokens += (
            int(mask.shape[0] * mask.shape[1])
            if hasattr(mask, "shape")
            else sum(len(row) for row in mask)
        )

    def __call__(self, *args, **kwargs):
        encoded = self._tokenizer(*args, **kwargs)
        mask = encoded["attention_mask"]
        self.real_tokens += [
            int(sum(row)) for row in (mask.tolist() if hasattr(mask, "tolist") else mask)
        ]
        if kwargs.get("padding"):
            self._count_padded(encoded)
        return encoded

    def pad(self, *args, **kwargs):
        padded = self._tokenizer.pad(*args, **kwargs)
        self._count_padded(padded)
        return padded

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (``VmHWM``; ``ru_maxrss`` survives exec on Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("annotate", "embed", "generate"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="h5ad of the cells (X = C2S-normalised)")
    parser.add_argument("--label-column", default="cell_type")
    parser.add_argument("--n-genes", type=int, required=True)
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import anndata
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from cell2sentence import tasks
    from cell2sentence.csdata import CSData
    from cell2sentence.csmodel import CSModel

    adata = anndata.read_h5ad(args.data)
    workdir = Path(args.workdir)
    result: dict = {
        "task": args.task,
        "n_cells": int(adata.n_obs),
        "threads": args.threads,
        "torch": torch.__version__,
    }

    t0 = time.perf_counter()
    csmodel = CSModel(args.model, save_dir=str(workdir), save_name="csmodel")
    result["csmodel_setup_s"] = round(time.perf_counter() - t0, 3)
    counter = CountingTokenizer(csmodel.tokenizer)
    csmodel.tokenizer = counter

    if args.task in ("annotate", "embed"):
        # The package's prompt formatter reads the organism from a dataset column.
        adata.obs["organism"] = "Homo sapiens"
        t0 = time.perf_counter()
        arrow, vocab = CSData.adata_to_arrow(adata, label_col_names=[args.label_column, "organism"])
        csdata = CSData.csdata_from_arrow(arrow, vocab, save_dir=str(workdir), save_name="cells")
        result["sentence_conversion_s"] = round(time.perf_counter() - t0, 3)

    t0, cpu0 = time.perf_counter(), time.process_time()
    if args.task == "annotate":
        outputs = tasks.predict_cell_types_of_data(
            csdata, csmodel, n_genes=args.n_genes, max_num_tokens=args.max_new_tokens
        )
    elif args.task == "embed":
        outputs = tasks.embed_cells(
            csdata, csmodel, n_genes=args.n_genes, inference_batch_size=args.batch_size
        )
    else:
        labels = [str(v) for v in adata.obs[args.label_column]]
        outputs = tasks.generate_cells_conditioned_on_cell_type(
            csmodel,
            labels,
            n_genes=args.n_genes,
            organism="Homo sapiens",
            inference_batch_size=args.batch_size,
            max_num_tokens=args.max_new_tokens,
        )
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0

    if args.task == "embed":
        vectors = np.asarray(outputs)
        answered = int(np.isfinite(vectors).all(axis=1).sum()) if vectors.ndim == 2 else 0
        result["embedding_shape"] = list(vectors.shape)
    else:
        answered = sum(1 for text in outputs if str(text).strip())
        result["examples"] = [str(text)[:200] for text in outputs[:2]]
    result.update(
        {
            "seconds": round(seconds, 3),
            "cells_per_s": round(len(outputs) / seconds, 3),
            "cpu_seconds": round(cpu_seconds, 3),
            "n_outputs": len(outputs),
            "n_answered": answered,
            "prompt_tokens": counter.real_tokens,
            "padded_prompt_tokens": counter.padded_tokens,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    )
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
