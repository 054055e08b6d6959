"""Benchmark of the cell-sentence transform against the reference package (cell2sentence 1.2.0).

Every measurement runs in its own subprocess, which reports its wall times and its own peak
resident memory (``VmHWM``), so one measurement's memory never hides another's.

Measurements
------------
1. ``stream``: synthetic count-like cells (20k genes, ~2k expressed per cell: UMIs drawn from a
   log-normal gene popularity, then total 1e4 + log10(1 + x)) converted chunk by chunk to
   top-200 sentence strings, at 10k / 100k / 1M cells, after one untimed chunk that loads the
   compiled kernels (its time is reported). The worker generates ``STREAM_CHUNKS``
   distinct 1,000-cell chunks and cycles through them (generating 1M cells costs far more than
   converting them, and only the conversion is timed); the whole matrix never exists and peak
   RSS must stay flat as cells grow.
2. ``same matrix``: the synthetic generator's first ``--subset-cells`` cells (default 100k,
   the full matrix the issue names) and the largest real dataset in ../shared/data (by stored
   nonzeros), saved as C2S-normalised h5ad. Our conversion (top 200, and full length, i.e. every
   expressed gene: the reference's output) and the reference's public conversion
   (``generate_vocabulary`` + ``generate_sentences``) run on the same file, each in a
   subprocess, reporting best-of-3 wall and CPU seconds and the first call's wall seconds (ours
   includes loading the compiled numba kernels from their cache there). Loading the file is
   not timed.
3. ``end to end``: the real dataset from its raw file through ``compute_sentences`` (ranking
   the detected source matrix chunk by chunk) and ``get_sentences``: a second call timed, the
   first one (which loads the compiled kernels) reported beside it.

Usage::

    benchmarks/reference_env.sh                      # once: the reference venv in /tmp
    python benchmarks/bench_sentences.py [--reference-python /tmp/c2s_reference_venv/bin/python]
        [--stream-cells 10000 100000 1000000] [--subset-cells 100000] [--rounds 1]
        [--out benchmarks/results/...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("C2S_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_REFERENCE_PYTHON = "/tmp/c2s_reference_venv/bin/python"
N_GENES = 20_000
CHUNK_CELLS = 1_000
TOP_K = 200
REPEATS = 3  # conversions on the same file report the best of these (both packages alike)
STREAM_CHUNKS = 10  # distinct synthetic chunks the stream cycles through


def peak_rss_mb() -> float:
    """Peak resident memory of this process image in MiB.

    ``VmHWM`` rather than ``ru_maxrss``: Linux carries ``ru_maxrss`` over from the parent across
    fork + exec, so a worker started by a big parent would report the parent's peak.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status (Linux only)")


def machine() -> dict:
    """CPU, cores, RAM, versions and load: the context every figure depends on."""
    import numpy as np

    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kib = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024**2, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_average_1_5_15": list(os.getloadavg()),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


@functools.cache
def gene_lookup_table():
    """Inverse-CDF table of a log-normal gene popularity: one take per UMI, no binary search."""
    import numpy as np

    popularity = np.random.default_rng(12345).lognormal(0.0, 2.0, N_GENES)
    cdf = np.cumsum(popularity / popularity.sum())
    levels = 2**22
    return np.minimum(np.searchsorted(cdf, (np.arange(levels) + 0.5) / levels), N_GENES - 1)


def synthetic_chunk(n_cells: int, seed: int):
    """C2S-normalised CSR of count-like cells: UMIs drawn from a skewed gene popularity."""
    import numpy as np
    import scipy.sparse as sp

    from c2s_engine.normalization import to_c2s

    table = gene_lookup_table()
    rng = np.random.default_rng(seed)
    umis = rng.lognormal(np.log(4_000), 0.3, n_cells).astype(np.int64)
    genes = table[rng.integers(0, table.size, int(umis.sum()))]
    cell_of_umi = np.repeat(np.arange(n_cells, dtype=np.int64), umis)
    # One entry per UMI; building the CSR sums the UMIs of each (cell, gene) into its count.
    ones = np.ones(genes.size, dtype=np.float32)
    counts = sp.csr_matrix((ones, (cell_of_umi, genes)), shape=(n_cells, N_GENES))
    return to_c2s(counts, "counts")


def synthetic_cells(n_cells: int):
    """The first ``n_cells`` cells of the generator, built CHUNK_CELLS at a time."""
    import scipy.sparse as sp

    starts = range(0, n_cells, CHUNK_CELLS)
    return sp.vstack(
        [
            synthetic_chunk(min(CHUNK_CELLS, n_cells - start), seed=i)
            for i, start in enumerate(starts)
        ],
        format="csr",
    )


def worker_stream(n_cells: int) -> dict:
    """Convert n_cells synthetic cells chunk by chunk; nothing accumulates."""
    import numpy as np

    from c2s_engine.sentences import rank_genes, sentences_from_ranks

    names = np.array([f"GENE{i}" for i in range(N_GENES)], dtype=object)
    chunks = [synthetic_chunk(CHUNK_CELLS, seed=i) for i in range(STREAM_CHUNKS)]
    # One untimed chunk first: it loads the compiled kernels from numba's cache (reported).
    t0 = time.perf_counter()
    sentences_from_ranks(rank_genes(chunks[0], TOP_K, seed=0), names)
    warm_up = time.perf_counter() - t0
    rank_s = strings_s = 0.0
    nnz = n_chars = 0
    for index, start in enumerate(range(0, n_cells, CHUNK_CELLS)):
        block = chunks[index % STREAM_CHUNKS][: min(CHUNK_CELLS, n_cells - start)]
        nnz += block.nnz
        t0 = time.perf_counter()
        ranks = rank_genes(block, TOP_K, seed=0)
        t1 = time.perf_counter()
        sentences = sentences_from_ranks(ranks, names)
        t2 = time.perf_counter()
        rank_s += t1 - t0
        strings_s += t2 - t1
        n_chars += sum(map(len, sentences))  # stands in for writing them out
    return {
        "cells": n_cells,
        "genes": N_GENES,
        "mean_expressed_genes_per_cell": round(nnz / n_cells, 1),
        "top_k": TOP_K,
        "rank_seconds": round(rank_s, 3),
        "rank_cells_per_s": round(n_cells / rank_s, 1),
        "rank_and_strings_seconds": round(rank_s + strings_s, 3),
        "rank_and_strings_cells_per_s": round(n_cells / (rank_s + strings_s), 1),
        "sentence_chars": n_chars,
        "distinct_chunks": STREAM_CHUNKS,
        "untimed_first_chunk_seconds": round(warm_up, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def timed(convert) -> tuple[float, float, object, float]:
    """Best wall and best CPU seconds of REPEATS runs of ``convert()``, its last result, and the
    wall seconds of the first run (which includes one-off costs such as loading compiled code).

    CPU seconds (all threads of the process) move much less than wall seconds when other jobs
    share the machine, so both are reported.
    """
    wall = cpu = float("inf")
    first = None
    for _ in range(REPEATS):
        t0, c0 = time.perf_counter(), time.process_time()
        result = convert()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
        first = time.perf_counter() - t0 if first is None else first
    return wall, cpu, result, first


def worker_ours(path: str) -> dict:
    """Our conversion of a C2S-normalised h5ad: top 200 and full length, with strings.

    Full length takes K = the largest number of expressed genes in a cell, computed inside the
    timed call: every cell's sentence then holds all its expressed genes, the reference's output.
    """
    import anndata as ad
    import numpy as np

    from c2s_engine.sentences import rank_genes, sentences_from_ranks

    adata = ad.read_h5ad(path)
    X, names = adata.X, np.asarray(adata.var_names, dtype=object)
    result = {"cells": adata.n_obs, "genes": adata.n_vars, "loaded_rss_mb": round(peak_rss_mb(), 1)}
    top_ks = {"top200": lambda: TOP_K, "full_length": lambda: int(np.diff(X.indptr).max())}
    for label, top_k in top_ks.items():
        wall, cpu, sentences, first = timed(
            lambda top_k=top_k: sentences_from_ranks(rank_genes(X, top_k(), seed=0), names)
        )
        result[label] = {
            "seconds": round(wall, 3),
            "first_call_seconds": round(first, 3),
            "cpu_seconds": round(cpu, 3),
            "cells_per_s": round(adata.n_obs / wall, 1),
            "cells_per_cpu_s": round(adata.n_obs / cpu, 1),
            "mean_words": round(sum(s.count(" ") + 1 for s in sentences if s) / len(sentences), 1),
        }
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def worker_reference(path: str) -> dict:
    """The reference package's public conversion on the same file (its own venv)."""
    import contextlib
    import io

    import anndata as ad
    from cell2sentence.utils import generate_sentences, generate_vocabulary

    adata = ad.read_h5ad(path)
    loaded = peak_rss_mb()

    def convert():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return generate_sentences(adata, generate_vocabulary(adata))

    wall, cpu, sentences, first = timed(convert)
    return {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "seconds": round(wall, 3),
        "first_call_seconds": round(first, 3),
        "cpu_seconds": round(cpu, 3),
        "cells_per_s": round(adata.n_obs / wall, 1),
        "cells_per_cpu_s": round(adata.n_obs / cpu, 1),
        "mean_words": round(sum(len(s.split()) for s in sentences) / len(sentences), 1),
        "loaded_rss_mb": round(loaded, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def worker_end_to_end(path: str) -> dict:
    """Raw file -> compute_sentences (normalisation read chunk by chunk) -> strings."""
    import anndata as ad

    import c2s_engine.normalization  # noqa: F401  (imported lazily by compute_sentences: untimed)
    from c2s_engine.sentences import compute_sentences, get_sentences

    adata = ad.read_h5ad(path)
    runs = []
    for _ in range(2):  # the first call also loads the compiled kernels from numba's cache
        t0 = time.perf_counter()
        compute_sentences(adata, top_k=TOP_K, seed=0)
        t1 = time.perf_counter()
        sentences = get_sentences(adata)
        runs.append((t1 - t0, time.perf_counter() - t1))
    (first_rank, first_strings), (rank, strings) = runs
    return {
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "compute_sentences_seconds": round(rank, 3),
        "get_sentences_seconds": round(strings, 3),
        "cells_per_s": round(adata.n_obs / (rank + strings), 1),
        "first_call_seconds": round(first_rank + first_strings, 3),
        "n_sentences": len(sentences),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


WORKERS = {
    "stream": lambda arg: worker_stream(int(arg)),
    "ours": worker_ours,
    "reference": worker_reference,
    "end_to_end": worker_end_to_end,
}


def run_worker(python: str, kind: str, arg: str) -> dict:
    """Run one measurement in a fresh interpreter and parse the JSON line it prints last."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--worker", kind, arg],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    return result


def largest_real_dataset() -> Path | None:
    """The shared h5ad with the most stored nonzeros (the most work for the transform)."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    best, best_nnz = None, -1
    for path in sorted(SHARED_DATA.glob("*/*.h5ad")):
        X = ad.read_h5ad(path).X
        nnz = X.nnz if sp.issparse(X) else int(np.count_nonzero(X))
        if nnz > best_nnz:
            best, best_nnz = path, nnz
    return best


def c2s_normalised_copy(raw_path: Path, out_path: Path) -> None:
    """Write the C2S-convention expression of a dataset as the X of a new h5ad.

    The reference upper-cases gene names into a dict and then indexes it by column, so names
    that collide once upper-cased (mouse data) break it; they are made unique upper-case here.
    The ranking work is the same.
    """
    import anndata as ad
    import scipy.sparse as sp

    from c2s_engine.normalization import iter_expression_chunks

    adata = ad.read_h5ad(raw_path)
    X = sp.vstack([block for _, _, block in iter_expression_chunks(adata)]).tocsr()
    copy = ad.AnnData(X, obs=adata.obs[[]])
    copy.var_names = adata.var_names.str.upper()
    copy.var_names_make_unique()
    copy.write_h5ad(out_path)


def compare(python: str, reference_python: str | None, path: Path, rounds: int = 1) -> dict:
    """Ours and the reference on one file, alternating for ``rounds`` rounds; best of each.

    Alternating spreads both over the same stretch of time, which matters on a shared machine.
    """
    ours_runs, reference_runs = [], []
    for _ in range(rounds):
        ours_runs.append(run_worker(python, "ours", str(path)))
        if reference_python:
            reference_runs.append(run_worker(reference_python, "reference", str(path)))
    ours = dict(ours_runs[0])
    for label in ("top200", "full_length"):
        ours[label] = best_of([run[label] for run in ours_runs])
    ours["peak_rss_mb"] = max(run["peak_rss_mb"] for run in ours_runs)
    result = {"rounds": rounds, "ours": ours}
    if reference_runs:
        reference = best_of(reference_runs)
        reference["peak_rss_mb"] = max(run["peak_rss_mb"] for run in reference_runs)
        result["reference"] = reference
        for label in ("top200", "full_length"):
            result[f"speedup_{label}_vs_reference"] = {
                "wall": round(ours[label]["cells_per_s"] / reference["cells_per_s"], 1),
                "cpu": round(ours[label]["cells_per_cpu_s"] / reference["cells_per_cpu_s"], 1),
            }
    return result


def best_of(runs: list[dict]) -> dict:
    """The run with the best wall rate, with the best CPU rate of all runs merged in."""
    best = dict(max(runs, key=lambda m: m["cells_per_s"]))
    fastest_cpu = max(runs, key=lambda m: m["cells_per_cpu_s"])
    best["cpu_seconds"] = fastest_cpu["cpu_seconds"]
    best["cells_per_cpu_s"] = fastest_cpu["cells_per_cpu_s"]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reference-python", default=DEFAULT_REFERENCE_PYTHON)
    parser.add_argument("--stream-cells", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--subset-cells", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per file")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/bench_sentences.json"))
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, arg = args.worker
        print(json.dumps(WORKERS[kind](arg)))
        return

    import anndata as ad

    sys.path.insert(0, str(REPO))  # the engine, for preparing the real dataset
    python = sys.executable
    reference_python = args.reference_python if Path(args.reference_python).exists() else None
    if reference_python is None:
        print(f"reference python not found at {args.reference_python}: run reference_env.sh")
    started = time.perf_counter()
    report: dict = {"machine": machine(), "top_k": TOP_K}

    report["stream"] = []
    for n_cells in args.stream_cells:
        report["stream"].append(run_worker(python, "stream", str(n_cells)))
        print("stream", json.dumps(report["stream"][-1]))

    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "synthetic_subset.h5ad"
        ad.AnnData(synthetic_cells(args.subset_cells)).write_h5ad(subset)
        report["synthetic_subset"] = compare(python, reference_python, subset, args.rounds)
        print("synthetic subset", json.dumps(report["synthetic_subset"]))

        real = largest_real_dataset()
        if real is not None:
            normalised = Path(tmp) / "real_c2s.h5ad"
            c2s_normalised_copy(real, normalised)
            report["real"] = {"dataset": str(real.relative_to(SHARED_DATA))}
            report["real"].update(compare(python, reference_python, normalised, args.rounds))
            report["real"]["end_to_end"] = run_worker(python, "end_to_end", str(real))
            print("real", json.dumps(report["real"]))

    if reference_python:
        reference_rate = report["synthetic_subset"]["reference"]["cells_per_s"]
        stream_100k = next((s for s in report["stream"] if s["cells"] == 100_000), None)
        if stream_100k:
            report["speedup_100k_stream_top200_strings_vs_reference_subset"] = round(
                stream_100k["rank_and_strings_cells_per_s"] / reference_rate, 1
            )
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} in {report['total_seconds']} s")


if __name__ == "__main__":
    main()
