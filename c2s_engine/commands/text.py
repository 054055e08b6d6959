"""``c2s caption``, ``c2s summarize`` and ``c2s ask``: the tasks that answer in words.

The input is read and prepared like the data commands' input, and the options that name
columns or clusters are checked before the model is loaded, so a typo fails at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from c2s_engine.commands.common import (
    add_model_options,
    cache_arg,
    check_out_path,
    load_input,
    load_model_from_args,
    progress_bar,
)

LIST_SEPARATOR = ";"  # between genes and between cell names in one CSV cell


def _write_text_or_json(out: Path | None, text: str, record: dict[str, Any]) -> None:
    if out is None:
        return
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    else:
        out.write_text(text + "\n", encoding="utf-8")


def cmd_caption(args: argparse.Namespace) -> int:
    from c2s_engine.tasks.caption import caption_clusters, captions_table
    from c2s_engine.tasks.facts import group_labels

    out = check_out_path(args.out, (".csv",))
    adata = load_input(args)
    group_labels(adata, args.groupby)
    model = load_model_from_args(args)
    caption_clusters(adata, model, groupby=args.groupby, n_cells=args.n_cells, top_k=args.top_k,
                     seed=args.seed, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, progress=progress_bar(args, "clusters"),
                     cache=cache_arg(args), allow_unsupported=args.allow_unsupported)
    table = captions_table(adata)
    for column in ("top_genes", "cells_used"):
        table[column] = table[column].map(LIST_SEPARATOR.join)
    table = table[["cluster", "n_cells", "caption", "top_genes", "cells_used"]]
    table.to_csv(out, index=False)
    if not args.quiet:
        for row in table.itertuples():
            print(f"{row.cluster} ({row.n_cells} cells): {row.caption}")
        print(f"wrote {len(table)} captions to {out}")
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from c2s_engine.tasks.facts import check_n_cells, group_labels
    from c2s_engine.tasks.summarize import summarize_dataset

    out = check_out_path(args.out, (".txt", ".json"))
    n_cells = None if args.fill_context else args.n_cells
    check_n_cells(n_cells)
    adata = load_input(args)
    if args.groupby is not None:
        group_labels(adata, args.groupby)
    model = load_model_from_args(args)
    summary = summarize_dataset(
        adata, model, n_cells=n_cells, groupby=args.groupby, top_k=args.top_k, seed=args.seed,
        context_length=args.context_length, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, progress=progress_bar(args, "summary"),
        cache=cache_arg(args), allow_unsupported=args.allow_unsupported)
    print(summary.text)
    _write_text_or_json(out, summary.text, dataclasses.asdict(summary))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from c2s_engine.tasks.ask import DATASET_SCOPE, answer_question
    from c2s_engine.tasks.facts import group_labels

    out = check_out_path(args.out, (".txt", ".json"))
    adata = load_input(args)
    if args.groupby is not None:
        group_labels(adata, args.groupby)
    scope = args.cells if args.cells else args.scope or DATASET_SCOPE
    model = load_model_from_args(args)
    answer = answer_question(
        adata, args.question, model, scope=scope, groupby=args.groupby, n_cells=args.n_cells,
        top_k=args.top_k, seed=args.seed, context_length=args.context_length,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        progress=progress_bar(args, "answer"), cache=cache_arg(args),
        allow_unsupported=args.allow_unsupported)
    print(answer.answer)
    if args.show_context:
        print(f"\n--- context: {len(answer.cells_used)} cells ({', '.join(answer.cells_used)}), "
              f"{answer.n_tokens} of {answer.budget} tokens ---")
        print(answer.prompt)
    _write_text_or_json(out, answer.answer, dataclasses.asdict(answer))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``caption``, ``summarize`` and ``ask`` sub-commands."""
    from c2s_engine.cli import _add_input_options

    p = subparsers.add_parser("caption", help="caption every cluster from a few of its cells (CSV)")
    _add_input_options(p)
    p.add_argument("--groupby", required=True, metavar="COL", help="obs column of the clusters")
    p.add_argument("--n-cells", type=int, default=10, help="cells drawn per cluster (default 10)")
    add_model_options(p, out_required=True,
                      out_help="output CSV: cluster, n_cells, caption, top_genes, cells_used "
                      f"(lists joined by '{LIST_SEPARATOR}')")
    p.set_defaults(func=cmd_caption)

    p = subparsers.add_parser("summarize", help="print an abstract-style summary of the dataset")
    _add_input_options(p)
    p.add_argument("--groupby", metavar="COL", default=None,
                   help="obs column (clusters, labels) to draw the cells evenly from")
    cells = p.add_mutually_exclusive_group()
    cells.add_argument("--n-cells", type=int, default=20, help="cells offered (default 20)")
    cells.add_argument("--fill-context", action="store_true",
                       help="offer cells until the model's context is full")
    p.add_argument("--context-length", type=int, default=None,
                   help="token budget (default: the model card's context length)")
    add_model_options(p, out_help="also write the summary to a .txt, or with its context to a "
                      ".json")
    p.set_defaults(func=cmd_summarize)

    p = subparsers.add_parser("ask", help="answer a question about the dataset, citing the context")
    _add_input_options(p)
    p.add_argument("--question", required=True, help="the question, in quotes")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--scope", default=None,
                       help="'dataset' (default) or a cluster name of --groupby")
    scope.add_argument("--cells", nargs="+", metavar="NAME", default=None,
                       help="ask about these cells (obs names)")
    p.add_argument("--groupby", metavar="COL", default=None,
                   help="obs column of the clusters (sizes and marker genes go into the context)")
    p.add_argument("--n-cells", type=int, default=20, help="cells offered (default 20)")
    p.add_argument("--context-length", type=int, default=None,
                   help="token budget (default: the model card's context length)")
    p.add_argument("--show-context", action="store_true",
                   help="also print the context given to the model (facts, cells, prompt)")
    add_model_options(p, out_help="also write the answer to a .txt, or with its context to a "
                      ".json")
    p.set_defaults(func=cmd_ask)
