"""CPU inference benchmark: C2S Studio against the reference package, same checkpoint and cells.

Both sides load the ~20M-parameter GPT-NeoX of ``build_bench_model.py`` (random weights that
can never end an answer early, so every answer is exactly ``max_new_tokens`` long on both
sides) and work on the same real cells (Kang PBMC, a seeded sample of ``--cells``), with the
same number of genes per sentence, the same number of new tokens and the same torch threads.
The three tasks run one after the other, ours first, then the reference in its own venv
(``reference_inference.py`` in a subprocess, public API of ``cell2sentence==1.2.0`` only):

- cell type prediction: ``c2s_engine.tasks.annotate.annotate`` (free text, greedy) against
  ``cell2sentence.tasks.predict_cell_types_of_data``;
- embedding: ``c2s_engine.tasks.embed.embed`` (cell sentence inside the cell-type prompt, as
  the reference does) against ``cell2sentence.tasks.embed_cells``;
- conditional generation: ``c2s_engine.tasks.generate.generate_cells`` (greedy, so the
  decoding matches the reference's default; our call also reconstructs expression) against
  ``cell2sentence.tasks.generate_cells_conditioned_on_cell_type``, on ``--gen-per-type`` cells
  of each of the data's cell types (72 x 7 types = 504 cells by default).

"ours" runs at our defaults: precision "auto" (bf16 on a CPU with bf16 instructions, else
fp32; the variable C2S_CPU_PRECISION is cleared for the run) and our default batch size. An
extra row, "ours_at_reference_settings", runs ours at the reference's settings instead: its
precision (fp32 for annotate and embed; bf16 for generation, which the reference loads in
bfloat16) and its batch size 8, so the gain of the defaults and that of the code are apart.

Only the task call is timed on both sides (data preparation and model loading are not), with
our result cache off (``cache=False``). Our cache is then measured separately: a first call with
the cache on (it stores) and a rerun (it must hit for every cell).

Work and FLOP/s
---------------
Both sides' tokenizers are wrapped in a counting proxy, so each side's real prompt tokens
``P`` per cell are measured (the two packages word their prompts differently). Useful forward
FLOPs per cell, counted alike for both sides (padding and wasted logits are not useful work)::

    tokens through the model  T = P + M - 1        (M new tokens; M = 0 for embeddings)
    FLOPs = 2 * N * T                               (N = non-embedding parameters)
          + 2 * n_layers * d_model * sum(t for t in 1..T)   (attention over the context so far)
          + 2 * d_model * vocab * M                 (output layer, once per new token)

Achieved GFLOP/s = FLOPs / task seconds. Theoretical peak = cores x clock x fp32 FLOP per
cycle and core, read from /proc/cpuinfo (nominal clock, no boost; FLOP/cycle from the vector
units: see ``cpu_peak``). The practical peak is the best of a few fp32 4096^2 ``torch.matmul``
on the same threads. The load average is recorded before and after each measurement, since
the machine may be shared.

Usage::

    python benchmarks/build_bench_model.py          # once: the model in /tmp
    benchmarks/reference_env.sh                     # once: the reference venv in /tmp
    python benchmarks/bench_inference_cpu.py [--cells 500] [--gen-per-type 72]
        [--out benchmarks/results/inference_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_sentences import machine, peak_rss_mb
from build_bench_model import DEFAULT_OUT as DEFAULT_MODEL
from build_bench_model import KANG, build
from reference_inference import CountingTokenizer

from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE_PYTHON = "/tmp/c2s_reference_venv/bin/python"
LABEL = "cell_type"
TARGETS = {"annotate": 1.5, "embed": 1.0, "generate": 2.0}
REFERENCE_BATCH_SIZE = 8  # the reference's default inference_batch_size


def cpu_peak() -> dict:
    """Theoretical fp32 peak from /proc/cpuinfo, with the assumption it rests on."""
    info: dict[str, str] = {}
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    flags = set(info.get("flags", "").split())
    cores = os.cpu_count() or 1
    ghz = float(info.get("cpu MHz", "0")) / 1000
    amd_zen4 = (
        info.get("vendor_id") == "AuthenticAMD"
        and info.get("cpu family") == "25"
        and "avx512f" in flags
    )
    if amd_zen4:
        per_cycle, why = (
            32,
            (
                "AMD family 25 with AVX-512 (Zen 4): two 256-bit FMA pipes, "
                "512-bit ops double-pumped: 2 x 8 fp32 lanes x 2 FLOP"
            ),
        )
    elif "avx512f" in flags:
        per_cycle, why = 64, "AVX-512 with two 512-bit FMA units: 2 x 16 fp32 lanes x 2 FLOP"
    elif "fma" in flags:
        per_cycle, why = 32, "AVX2 with two 256-bit FMA units: 2 x 8 fp32 lanes x 2 FLOP"
    else:
        per_cycle, why = 8, "SSE without FMA: 4 fp32 lanes x (add + mul)"
    return {
        "cpu_model": info.get("model name", "unknown"),
        "cpu_family": info.get("cpu family", ""),
        "model_number": info.get("model", ""),
        "cores": cores,
        "clock_ghz": round(ghz, 3),
        "fp32_flop_per_cycle_per_core": per_cycle,
        "assumption": f"{why}; nominal clock from /proc/cpuinfo 'cpu MHz' (no boost)",
        "theoretical_fp32_gflops": round(cores * ghz * per_cycle, 1),
        "theoretical_bf16_gflops": round(2 * cores * ghz * per_cycle, 1)
        if "avx512_bf16" in flags
        else None,
    }


def matmul_peak(threads: int, size: int = 4096, repeats: int = 5, dtype: str = "fp32") -> dict:
    """Best GFLOP/s of ``size``^2 matrix products on ``threads`` threads in ``dtype``."""
    import torch

    torch.set_num_threads(threads)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(size, size).to(torch_dtype)
    b = torch.randn(size, size).to(torch_dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return {
        "size": size,
        "threads": threads,
        "dtype": dtype,
        "best_seconds": round(best, 4),
        "gflops": round(2 * size**3 / best / 1e9, 1),
    }


def model_shape(model_dir: Path) -> dict:
    """Sizes the FLOP formula needs, from the checkpoint's config and weights."""
    from safetensors import safe_open
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    total = embedding = 0
    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
            n = weights.get_slice(name).get_shape()
            size = int(n[0]) * (int(n[1]) if len(n) > 1 else 1)
            total += size
            if "embed" in name or "lm_head" in name:
                embedding += size
    return {
        "n_parameters": total,
        "n_non_embedding": total - embedding,
        "n_layers": config.num_hidden_layers,
        "d_model": config.hidden_size,
        "vocab": config.vocab_size,
    }


def useful_flops(prompt_tokens: list[int], new_tokens: int, shape: dict) -> float:
    """Forward FLOPs of all cells by the formula of the module docstring."""
    total = 0.0
    for p in prompt_tokens:
        t = p + new_tokens - 1 if new_tokens else p
        total += 2 * shape["n_non_embedding"] * t
        total += 2 * shape["n_layers"] * shape["d_model"] * t * (t + 1) / 2
        total += 2 * shape["d_model"] * shape["vocab"] * new_tokens
    return total


def prepare_cells(n_cells: int, top_k: int, workdir: Path, seed: int = 0):
    """A seeded sample of Kang PBMC cells, prepared for us and saved for the reference.

    The reference's h5ad holds our C2S-normalised expression as X (what it ranks), so both
    sides rank the same values into ``top_k``-gene sentences.
    """
    import anndata as ad
    import numpy as np

    from c2s_engine.pp import prepare
    from c2s_engine.sentences import compute_sentences

    full = ad.read_h5ad(KANG)
    cells = np.sort(np.random.default_rng(seed).choice(full.n_obs, n_cells, replace=False))
    adata = full[cells].copy()
    prepare(adata)
    compute_sentences(adata, top_k=top_k)
    ref = ad.AnnData(adata.layers["c2s_norm"].copy(), obs=adata.obs[[LABEL]].copy())
    ref.var_names = adata.var_names
    ref.write_h5ad(workdir / "cells.h5ad")
    return adata


def conditions_file(types: list[str], per_type: int, workdir: Path) -> Path:
    """The generation conditions for the reference: each cell type ``per_type`` times."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    labels = np.repeat(types, per_type)
    obs = pd.DataFrame({LABEL: labels}, index=[f"gen{i}" for i in range(len(labels))])
    path = workdir / "conditions.h5ad"
    ad.AnnData(sp.csr_matrix((len(labels), 1), dtype=np.float32), obs=obs).write_h5ad(path)
    return path


def load_ours(model_dir: Path, precision: str = "auto"):
    from c2s_engine.models import load_model

    return load_model(str(model_dir), precision=precision, device="cpu")


def check_fixed_length(loaded, new_tokens: int) -> dict:
    """The model must write exactly ``new_tokens`` tokens whatever the stop rule."""
    from c2s_engine.inference import generate

    prompts = ["The cell type corresponding to these genes is:", "Cell sentence:"]
    result = generate(loaded, None, prompts, max_new_tokens=new_tokens, stop=(". ", ".\n", "\n"))
    if result.n_new_tokens != [new_tokens] * len(prompts):
        raise RuntimeError(f"answers are not fixed-length: {result.n_new_tokens}")
    return {"max_new_tokens": new_tokens, "n_new_tokens": result.n_new_tokens}


def run_ours(
    task: str, adata, loaded, args, cache_dir: Path | None, batch_size: int | None = None
) -> dict:
    """Time our task function with cache=False, then (with ``cache_dir``) a cache-filling call
    and a cached rerun."""
    from c2s_engine.inference import ResultCache
    from c2s_engine.tasks.annotate import annotate
    from c2s_engine.tasks.embed import embed
    from c2s_engine.tasks.generate import generate_cells

    types = sorted(adata.obs[LABEL].astype(str).unique())
    batch_size = batch_size or args.batch_size

    def call(cache):
        if task == "annotate":
            result = annotate(
                adata,
                loaded,
                top_k=args.genes,
                mode="generate",
                max_new_tokens=args.annotate_new_tokens,
                batch_size=batch_size,
                cache=cache,
            )
            answers = result.generated.tolist()
            return len(answers), sum(1 for a in answers if a.strip()), result.provenance
        if task == "embed":
            import numpy as np

            result = embed(
                adata,
                loaded,
                top_k=args.genes,
                text="prompt",
                batch_size=batch_size,
                cache=cache,
            )
            good = int(np.isfinite(result.embeddings).all(axis=1).sum())
            return result.embeddings.shape[0], good, result.provenance
        out = generate_cells(
            adata,
            loaded,
            cell_type=types,
            n=args.gen_per_type,
            top_k=args.genes,
            do_sample=False,
            max_new_tokens=args.generate_new_tokens,
            batch_size=batch_size,
            cache=cache,
        )
        sentences = out.obs["cell_sentence"].tolist()
        return out.n_obs, sum(1 for s in sentences if s.strip()), out.uns["c2s"]["generate"]

    counter = CountingTokenizer(loaded.tokenizer)
    plain = loaded.tokenizer
    loaded.tokenizer = counter
    load_before = os.getloadavg()
    start, cpu_start = time.perf_counter(), time.process_time()
    n_out, n_answered, prov = call(False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    load_after = os.getloadavg()
    loaded.tokenizer = plain
    result = {
        "precision": loaded.precision,
        "seconds": round(seconds, 3),
        "cells_per_s": round(n_out / seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "n_outputs": n_out,
        "n_answered": n_answered,
        "prompt_tokens": counter.real_tokens,
        "padded_prompt_tokens": counter.padded_tokens,
        "batch_size": batch_size,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "model_call_seconds": prov.get("calls", {})
        .get("generate", prov.get("calls", {}))
        .get("seconds"),
    }
    if cache_dir is None:
        return result
    store = ResultCache(cache_dir / task)
    start = time.perf_counter()
    call(store)
    filling = time.perf_counter() - start
    start = time.perf_counter()
    _, _, cached_prov = call(store)
    rerun = time.perf_counter() - start
    calls = cached_prov.get("calls", {})
    n_cached = (
        calls.get("generate", calls).get("n_cached", 0)
        if task == "annotate"
        else calls.get("n_cached", 0)
    )
    return {
        **result,
        "cache": {
            "first_call_with_cache_s": round(filling, 3),
            "rerun_s": round(rerun, 3),
            "rerun_n_cached": int(n_cached),
            "rerun_cells_per_s": round(n_out / rerun, 1) if rerun > 0 else None,
        },
        "peak_rss_mb_so_far": round(peak_rss_mb(), 1),
    }


def run_reference(task: str, data: Path, args, workdir: Path) -> dict:
    """One reference measurement in the reference venv (see reference_inference.py)."""
    out = workdir / f"reference_{task}.json"
    folder = workdir / f"reference_{task}"
    folder.mkdir(exist_ok=True)
    new_tokens = args.annotate_new_tokens if task == "annotate" else args.generate_new_tokens
    command = [
        args.reference_python,
        str(Path(__file__).with_name("reference_inference.py")),
        "--task",
        task,
        "--model",
        str(args.model),
        "--data",
        str(data),
        "--label-column",
        LABEL,
        "--n-genes",
        str(args.genes),
        "--max-new-tokens",
        str(new_tokens),
        "--batch-size",
        str(REFERENCE_BATCH_SIZE),
        "--threads",
        str(args.threads),
        "--workdir",
        str(folder),
        "--out",
        str(out),
    ]
    load_before = os.getloadavg()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    load_after = os.getloadavg()
    if proc.returncode != 0:
        raise RuntimeError(f"reference {task} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text(encoding="utf-8"))
    result["load_average_before_after"] = [round(load_before[0], 2), round(load_after[0], 2)]
    return result


def summarise(side: dict, new_tokens: int, shape: dict, peaks: dict) -> None:
    """Add token counts and achieved GFLOP/s (vs both peaks of its precision) to one side."""
    prompts = side.pop("prompt_tokens")
    flops = useful_flops(prompts, new_tokens, shape)
    gflops = flops / side["seconds"] / 1e9
    precision = side.get("precision") or "fp32"
    theoretical = peaks.get(f"theoretical_{precision}_gflops") or peaks["theoretical_fp32_gflops"]
    matmul = peaks.get(f"matmul_{precision}_gflops") or peaks["matmul_fp32_gflops"]
    side.update(
        {
            "n_prompts_counted": len(prompts),
            "mean_prompt_tokens": round(sum(prompts) / max(len(prompts), 1), 1),
            "new_tokens_per_cell": new_tokens,
            "useful_gflop": round(flops / 1e9, 2),
            "achieved_gflops": round(gflops, 2),
            "peaks_compared_with": precision,
            "pct_of_theoretical_peak": round(100 * gflops / theoretical, 2),
            "pct_of_matmul_peak": round(100 * gflops / matmul, 2),
            "tokens_per_s": round((sum(prompts) + new_tokens * len(prompts)) / side["seconds"], 1),
        }
    )


def save(report: dict, out: Path, started: float) -> None:
    """Write the report so far, with the load average and the time taken until now."""
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=500, help="cells for annotate and embed")
    parser.add_argument(
        "--gen-per-type", type=int, default=72,
        help="generated cells per cell type (7 Kang types: 504 cells, as many as --cells)"
    )
    parser.add_argument("--genes", type=int, default=100, help="genes per cell sentence")
    parser.add_argument("--annotate-new-tokens", type=int, default=16)
    parser.add_argument("--generate-new-tokens", type=int, default=64)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="our batch size (default: the engine's); the reference uses its default 8",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["annotate", "embed", "generate"],
        choices=["annotate", "embed", "generate"],
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--reference-python", default=DEFAULT_REFERENCE_PYTHON)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/inference_cpu.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.pop("C2S_CPU_PRECISION", None)  # "ours" measures the engine's own CPU choice
    started = time.perf_counter()
    if not (args.model / "model.safetensors").exists():
        build(args.model)
    if not Path(args.reference_python).exists():
        raise SystemExit(
            f"reference python not found at {args.reference_python}: run "
            "benchmarks/reference_env.sh"
        )
    report: dict = {"machine": machine()}
    peaks = cpu_peak()
    peaks["matmul"] = matmul_peak(args.threads)
    peaks["matmul_fp32_gflops"] = peaks["matmul"]["gflops"]
    peaks["matmul_bf16"] = matmul_peak(args.threads, dtype="bf16")
    peaks["matmul_bf16_gflops"] = peaks["matmul_bf16"]["gflops"]
    shape = model_shape(args.model)
    report.update(
        {
            "peaks": peaks,
            "model": {"path": str(args.model), **shape},
            "flop_formula": "per cell: T = P + M - 1 forward tokens (P prompt tokens, M new "
            "tokens, M = 0 for embeddings); FLOPs = 2*N_non_embedding*T + "
            "2*n_layers*d_model*T*(T+1)/2 + 2*d_model*vocab*M",
            "settings": {
                "cells": args.cells,
                "generated_cells": None,
                "genes": args.genes,
                "annotate_new_tokens": args.annotate_new_tokens,
                "generate_new_tokens": args.generate_new_tokens,
                "threads": args.threads,
                "our_batch_size": args.batch_size,
                "reference_batch_size": REFERENCE_BATCH_SIZE,
                "data": str(KANG),
                "cell_sample_seed": 0,
            },
        }
    )
    loaded = load_ours(args.model)
    report["fixed_length_check"] = check_fixed_length(loaded, 12)

    with tempfile.TemporaryDirectory(prefix="c2s_bench_inference_") as tmp:
        workdir = Path(tmp)
        adata = prepare_cells(args.cells, args.genes, workdir)
        types = sorted(adata.obs[LABEL].astype(str).unique())
        report["settings"]["generated_cells"] = len(types) * args.gen_per_type
        report["settings"]["cell_types"] = types
        conditions = conditions_file(types, args.gen_per_type, workdir)
        for task in args.tasks:
            new_tokens = {
                "annotate": args.annotate_new_tokens,
                "embed": 0,
                "generate": args.generate_new_tokens,
            }[task]
            ours = run_ours(task, adata, loaded, args, workdir / "cache")
            print(task, "ours", ours["seconds"], "s", flush=True)
            data = conditions if task == "generate" else workdir / "cells.h5ad"
            reference = run_reference(task, data, args, workdir)
            # The reference loads bfloat16 for generation only, fp32 otherwise; batch 8.
            same_precision = "bf16" if task == "generate" else "fp32"
            reference["precision"] = same_precision
            print(task, "reference", reference["seconds"], "s", flush=True)
            for side in (ours, reference):
                if (
                    side["n_answered"] != side["n_outputs"]
                    or side["n_outputs"] != ours["n_outputs"]
                ):
                    raise RuntimeError(f"{task}: not every cell got an answer: {side}")
                summarise(side, new_tokens, shape, peaks)
            ratio = ours["cells_per_s"] / reference["cells_per_s"]
            report[task] = {
                "ours": ours,
                "reference": reference,
                "speedup_cells_per_s": round(ratio, 2),
                # CPU time of the whole process (all threads): less sensitive to other work
                # on a shared machine than wall time, though spinning threads inflate it.
                "speedup_cells_per_cpu_s": round(reference["cpu_seconds"] / ours["cpu_seconds"], 2),
                "target_speedup": TARGETS[task],
                "target_met": bool(ratio >= TARGETS[task]),
            }
            same = loaded if loaded.precision == same_precision else load_ours(
                args.model, same_precision
            )
            variants = {"at_reference_settings": (same, REFERENCE_BATCH_SIZE)}
            for name, (model, batch_size) in variants.items():
                extra = run_ours(task, adata, model, args, None, batch_size=batch_size)
                summarise(extra, new_tokens, shape, peaks)
                report[task][f"ours_{name}"] = extra
                report[task][f"speedup_cells_per_s_{name}"] = round(
                    extra["cells_per_s"] / reference["cells_per_s"], 2
                )
            save(report, args.out, started)  # each task as it ends: a long run keeps them
    save(report, args.out, started)
    for task in args.tasks:
        r = report[task]
        print(
            f"{task:9s} ours {r['ours']['cells_per_s']:8.2f} cells/s "
            f"({r['ours']['achieved_gflops']:6.1f} GFLOP/s)  reference "
            f"{r['reference']['cells_per_s']:8.2f} cells/s "
            f"({r['reference']['achieved_gflops']:6.1f} GFLOP/s)  "
            f"x{r['speedup_cells_per_s']} (target x{r['target_speedup']})"
        )
    print(f"wrote {args.out} in {report['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
