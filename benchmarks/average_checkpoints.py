"""Uniform "model soup" (Wortsman et al. 2022): average the weights of fine-tunes of one model.

Used to test whether averaging the demo's stage-2 runs (all fine-tuned from the same stage-1
weights) generalises better than any one of them. The soup is written as a normal checkpoint
folder (the first run's config, tokenizer and card, the averaged safetensors), so it loads and
benchmarks like any model::

    python benchmarks/average_checkpoints.py --out runs/soup4 \\
        runs/demo_stage2 runs/exp_draws16 runs/demo_stage2_draws16_seed1 runs/exp_draws32
    OMP_NUM_THREADS=2 python benchmarks/bench_demo_pbmc.py --model runs/soup4 \\
        --out benchmarks/results/demo_pbmc_stage2_soup4.json --no-update-card --no-generation \\
        --tie-orders 4 8 16
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
RECORD = "c2s_run.json"


def average_checkpoints(folders: list[Path], out: Path) -> dict[str, torch.Tensor]:
    """Write the element-wise mean of the runs' weights to ``out`` and return it.

    The first run's record (``c2s_run.json``, with the shared split) and card are copied, and
    ``soup.json`` lists the averaged runs.

    Raises
    ------
    SystemExit
        Fewer than two runs, runs whose tensors differ in names or shapes (not fine-tunes of
        one model), or runs trained on different splits.
    """
    if len(folders) < 2:
        raise SystemExit("give at least two checkpoint folders to average")
    states = [load_file(folder / WEIGHTS) for folder in folders]
    first = states[0]
    for folder, state in zip(folders[1:], states[1:], strict=True):
        if state.keys() != first.keys() or any(state[k].shape != first[k].shape for k in first):
            raise SystemExit(f"{folder} does not have the tensors of {folders[0]}; "
                             "only fine-tunes of the same model can be averaged")
    # Accumulate in fp32 so a bf16 checkpoint does not lose precision while summing.
    mean = {name: (sum(s[name].float() for s in states) / len(states)).to(first[name].dtype)
            for name in first}
    # The benchmark reads the held-out cells from the run record, so the runs must share a split.
    splits = [json.loads((f / RECORD).read_text())["split"].get("test_cells") for f in folders]
    if any(split != splits[0] for split in splits):
        raise SystemExit("the runs were trained on different splits; a soup of them has no "
                         "held-out cells to score on")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(folders[0], out, ignore=shutil.ignore_patterns(WEIGHTS))
    save_file(mean, out / WEIGHTS, metadata={"format": "pt"})
    (out / "soup.json").write_text(json.dumps({"averaged": [str(f) for f in folders]}, indent=2))
    return mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="checkpoint folders to average")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    mean = average_checkpoints(args.runs, args.out)
    print(f"averaged {len(args.runs)} runs ({len(mean)} tensors) -> {args.out}")


if __name__ == "__main__":
    main()
