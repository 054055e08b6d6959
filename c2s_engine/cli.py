"""The ``c2s`` command: a thin shell over the engine's Python API.

Every sub-command reads its input with :func:`c2s_engine.read`, prepares it with
:func:`c2s_engine.pp.prepare` and calls one engine function. User errors
(:class:`~c2s_engine.errors.C2SError`) end the program with a one-line message
on stderr and exit status 2; ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from c2s_engine import __version__
from c2s_engine.errors import C2SError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="input file: .h5ad, .loom, 10x .h5, 10x mtx folder or .zip, .csv/.tsv(.gz)")
    parser.add_argument(
        "--gene-symbols",
        metavar="COL",
        default=None,
        help="var column holding gene symbols (auto-detected when var_names are Ensembl IDs)",
    )
    parser.add_argument(
        "--organism",
        default=None,
        help="override the detected organism: human or mouse",
    )
    parser.add_argument(
        "--layer",
        default=None,
        help="use this layer as the expression source instead of auto-detection",
    )
    orientation = parser.add_mutually_exclusive_group()
    orientation.add_argument(
        "--genes-in-rows",
        dest="genes_in_rows",
        action="store_true",
        default=None,
        help="text tables: rows are genes (default: detected from the labels)",
    )
    orientation.add_argument(
        "--cells-in-rows",
        dest="genes_in_rows",
        action="store_false",
        help="text tables: rows are cells",
    )


def _load(args: argparse.Namespace):
    """Read and prepare the input the same way for every command."""
    from c2s_engine.readers import read
    from c2s_engine.validation import prepare

    adata = read(args.input, genes_in_rows=args.genes_in_rows)
    report = prepare(adata, organism=args.organism, gene_symbols=args.gene_symbols, layer=args.layer)
    return adata, report


def cmd_inspect(args: argparse.Namespace) -> int:
    from c2s_engine.readers import read
    from c2s_engine.validation import validate

    adata = read(args.input, genes_in_rows=args.genes_in_rows)
    report = validate(adata, organism=args.organism, gene_symbols=args.gene_symbols, layer=args.layer)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_text())
    # The report is printed in full either way; a fatal problem still makes the exit status say so.
    report.raise_for_errors()
    return 0


def cmd_sentences(args: argparse.Namespace) -> int:
    from c2s_engine.sentences import iter_sentence_chunks

    if args.top_k < 1:
        raise C2SError(f"--top-k must be at least 1, got {args.top_k}", "pass e.g. --top-k 200")
    adata, _ = _load(args)
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise C2SError(f"output folder {out.parent} does not exist", "create it or choose another --out path")

    progress = _progress_bar(total=adata.n_obs, unit="cells", enabled=not args.quiet)
    start = time.perf_counter()
    tmp = out.with_name(out.name + ".partial")
    # Rows are streamed chunk by chunk so a backed million-cell file never sits in memory as text;
    # the partial file is renamed only on success so a failed run never leaves a truncated CSV.
    try:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["cell_id", "cell_sentence"])
            for cell_ids, sentences in iter_sentence_chunks(
                adata, top_k=args.top_k, tie_break=args.tie_break, seed=args.seed
            ):
                writer.writerows(zip(cell_ids, sentences, strict=True))
                progress(len(cell_ids))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    elapsed = time.perf_counter() - start
    if not args.quiet:
        rate = adata.n_obs / elapsed if elapsed > 0 else float("inf")
        print(f"wrote {adata.n_obs} cell sentences (top {args.top_k} genes) to {out} "
              f"in {elapsed:.1f} s ({rate:,.0f} cells/s)", file=sys.stderr)
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from webapp.launch import launch

    return launch(host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)


def _progress_bar(total: int, unit: str, enabled: bool) -> Callable[[int], None]:
    """A tqdm bar on stderr (cells/s shown by tqdm); a no-op when disabled."""
    if not enabled:
        return lambda n: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit=unit, unit_scale=True, file=sys.stderr, leave=False)
    return bar.update


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="c2s",
        description="C2S Studio: single-cell analysis with Cell2Sentence language models.",
    )
    parser.add_argument("--version", action="version", version=f"c2s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="print the validation report of a single-cell file")
    _add_input_options(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("sentences", help="write cell sentences (cell_id,cell_sentence) to a CSV")
    _add_input_options(p)
    p.add_argument("--top-k", type=int, default=200, help="genes per sentence (default 200)")
    p.add_argument("--out", required=True, help="output CSV path")
    p.add_argument(
        "--tie-break",
        choices=["random", "index"],
        default="random",
        help="order of genes with equal expression: seeded random priority (default) or var order",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the tie-break priority (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    p.set_defaults(func=cmd_sentences)

    from c2s_engine.commands import cells, models, perturb_spatial, text, train

    models.register(sub)
    cells.register(sub)
    text.register(sub)
    perturb_spatial.register(sub)
    train.register(sub)

    p = sub.add_parser("app", help="start the C2S Studio web app")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default localhost only)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--max-upload-mb", type=int, default=2048, help="upload size limit in MB")
    p.set_defaults(func=cmd_app)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except C2SError as err:
        if args.debug:
            raise
        print(f"c2s {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"c2s {args.command}: cancelled", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: still one line unless --debug
        if args.debug:
            raise
        first_line = (str(err).splitlines() or [""])[0]
        print(
            f"c2s {args.command}: internal error: {type(err).__name__}: {first_line} "
            "(rerun with --debug for the traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
