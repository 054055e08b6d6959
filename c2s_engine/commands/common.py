"""Options and plumbing shared by the model-backed ``c2s`` commands.

Every model command takes ``--model`` (default ``demo``), ``--precision``, ``--batch-size``
and ``--out``; every generating command also ``--max-new-tokens`` and ``--seed``. Each
shows a progress bar (cells/s) on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from c2s_engine.errors import C2SError
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE


def add_model_options(parser: argparse.ArgumentParser, *, generating: bool = True,
                      out_required: bool = False, out_help: str = "output path") -> None:
    """The options every model-backed command shares."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="demo",
                       help="'demo' (embedded default), a local folder or a Hugging Face id")
    group.add_argument("--precision", default="auto", choices=["auto", "4bit", "8bit", "bf16", "fp32"],
                       help="auto = 4bit on CUDA, fp32 on CPU")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                       help=f"prompts per batch (default {DEFAULT_BATCH_SIZE}; halved on out-of-memory)")
    group.add_argument("--top-k", type=int, default=None,
                       help="genes per cell sentence (default: the model card's)")
    group.add_argument("--no-cache", action="store_true", help="recompute instead of reusing cached results")
    group.add_argument("--allow-unsupported", action="store_true",
                       help="run even if the model card does not list this task (results are marked)")
    if generating:
        group.add_argument("--max-new-tokens", type=int, default=None,
                           help="longest answer in tokens (default: per task)")
        group.add_argument("--seed", type=int, default=0, help="random seed (sampling, cell choice)")
    parser.add_argument("--out", required=out_required, default=None, help=out_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def load_input(args: argparse.Namespace):
    """Read and prepare the input file the same way as the data commands."""
    from c2s_engine.readers import read
    from c2s_engine.validation import prepare

    adata = read(args.input, genes_in_rows=getattr(args, "genes_in_rows", None))
    prepare(adata, organism=getattr(args, "organism", None),
            gene_symbols=getattr(args, "gene_symbols", None), layer=getattr(args, "layer", None))
    return adata


def load_model_from_args(args: argparse.Namespace):
    """The LoadedModel named by ``--model``; load notices (CPU fallback, ...) go to stderr."""
    from c2s_engine.models import load_model

    if args.batch_size < 1:
        raise C2SError(f"--batch-size must be at least 1, got {args.batch_size}", "pass e.g. --batch-size 8")
    model = load_model(args.model, precision=args.precision, device=args.device,
                       batch_size=args.batch_size)
    for notice in model.notices:
        print(f"note: {notice}", file=sys.stderr)
    return model


def progress_bar(args: argparse.Namespace, desc: str) -> Callable[[int, int, float], None] | None:
    """A ``progress(done, total, items_per_s)`` callback drawing a tqdm bar on stderr."""
    if args.quiet:
        return None
    from tqdm.auto import tqdm

    state: dict[str, object] = {}

    def update(done: int, total: int, rate: float) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=desc, unit="cells", file=sys.stderr, leave=False)
        bar.n = done
        bar.set_postfix_str(f"{rate:,.1f} cells/s")
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def check_out_path(path: str | None, suffixes: tuple[str, ...]) -> Path | None:
    """Validate ``--out`` before any model work, so a typo never wastes a long run."""
    if path is None:
        return None
    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise C2SError(f"--out {path} must end with {' or '.join(suffixes)}", f"e.g. --out result{suffixes[0]}")
    if not out.parent.exists():
        raise C2SError(f"output folder {out.parent} does not exist", "create it or choose another --out path")
    return out


def cache_arg(args: argparse.Namespace):
    """``cache=`` argument for the task functions: False with --no-cache, else the default cache."""
    return False if args.no_cache else None
