"""``c2s annotate``, ``c2s embed`` and ``c2s generate``: the per-cell model commands.

``--labels FILE`` (annotate) takes candidate labels from a file: a ``.csv``/``.tsv`` table
(with a header) gives the values of its ``label`` column, or of its first column when it has
none; any other file holds one label per line, where blank lines and lines starting with ``#``
are skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from c2s_engine.commands.common import (
    add_model_options,
    cache_arg,
    check_out_path,
    load_input,
    load_model_from_args,
    progress_bar,
)
from c2s_engine.errors import LabelsError, TaskOptionError

H5AD = (".h5ad",)


def read_labels_file(path: str | Path) -> list[str]:
    """Candidate labels from ``--labels FILE`` (format in the module docstring), in file order.

    Raises
    ------
    LabelsError
        The file is missing, unreadable or holds no label.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"labels file {path} does not exist",
                          "pass a text file with one label per line, or a CSV with a 'label' "
                          "column")
    try:
        if path.suffix.lower() in (".csv", ".tsv"):
            table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",",
                                dtype=str)
            column = "label" if "label" in table.columns else table.columns[0]
            labels = table[column].dropna().tolist()
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            labels = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise LabelsError(f"labels file {path} cannot be read ({type(err).__name__})",
                          "save it as UTF-8 text, one label per line") from err
    labels = [" ".join(label.split()) for label in labels if label.strip()]
    if not labels:
        raise LabelsError(f"labels file {path} holds no label",
                          "write one candidate label per line")
    return labels


def cmd_annotate(args: argparse.Namespace) -> int:
    from c2s_engine.tasks.annotate import annotate

    out = check_out_path(args.out, H5AD)
    labels = read_labels_file(args.labels) if args.labels else None
    adata = load_input(args)
    model = load_model_from_args(args)
    extra = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens is not None else {}
    result = annotate(adata, model, labels=labels, labels_from=args.labels_from,
                      truth=args.truth, top_k=args.top_k, groupby=args.groupby, mode=args.mode,
                      tie_orders=args.tie_orders,
                      batch_size=args.batch_size, progress=progress_bar(args, "annotate"),
                      cache=cache_arg(args), allow_unsupported=args.allow_unsupported, **extra)
    adata.write_h5ad(out)
    how = f"scored among {len(result.candidates)} labels" if result.candidates else "free text"
    print(f"annotated {adata.n_obs} cells ({how}) into obs['c2s_cell_type']; wrote {out}")
    if result.metrics is not None:
        m = result.metrics
        print(f"accuracy {m.accuracy:.3f}, macro-F1 {m.macro_f1:.3f} against "
              f"obs['{result.provenance['params']['truth']}'] ({m.n_cells} labelled cells)")
    if result.clusters is not None:
        print(f"majority label per {args.groupby}:")
        for cluster, row in result.clusters.iterrows():
            print(f"  {cluster}: {row['cell_type']} ({row['agreement']:.0%} of "
                  f"{row['n_cells']} cells)")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from c2s_engine.tasks.embed import embed

    out = check_out_path(args.out, H5AD)
    adata = load_input(args)
    model = load_model_from_args(args)
    result = embed(adata, model, layer=args.hidden_layer, top_k=args.top_k, text=args.text,
                   batch_size=args.batch_size, progress=progress_bar(args, "embed"),
                   cache=cache_arg(args), allow_unsupported=args.allow_unsupported)
    adata.write_h5ad(out)
    rows, width = result.embeddings.shape
    print(f"embedded {rows} cells into obsm['{result.key}'] ({width} dimensions); wrote {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from c2s_engine.tasks.generate import generate_cells

    out = check_out_path(args.out, H5AD)
    if args.reference is None:
        raise TaskOptionError(
            "c2s generate needs --reference: the dataset whose genes and reverse fit turn "
            "generated sentences into expression",
            "pass --reference data.h5ad (for example the dataset you are studying)")
    reference = load_input(argparse.Namespace(**{**vars(args), "input": args.reference}))
    model = load_model_from_args(args)
    generated = generate_cells(
        reference, model, cell_type=args.cell_type, tissue=args.tissue, n=args.n,
        top_k=args.top_k, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        progress=progress_bar(args, "generate"), cache=cache_arg(args),
        allow_unsupported=args.allow_unsupported)
    generated.write_h5ad(out)
    totals = generated.uns["c2s"]["reconstruction"]
    print(f"generated {generated.n_obs} cells over {generated.n_vars} reference genes; "
          f"{totals['n_unknown_words']} of {totals['n_words']} generated words are not reference "
          f"genes; wrote {out}")
    return 0


def _add_reference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", metavar="IN", default=None,
                        help="required: dataset giving the genes and the reverse fit")
    parser.add_argument("--gene-symbols", metavar="COL", default=None,
                        help="var column of the reference holding gene symbols")
    parser.add_argument("--organism", default=None,
                        help="override the reference's detected organism: human or mouse")
    parser.add_argument("--layer", default=None, help="expression layer of the reference")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``annotate``, ``embed`` and ``generate`` sub-commands."""
    from c2s_engine.cli import _add_input_options
    from c2s_engine.tasks.annotate import MODES
    from c2s_engine.tasks.embed import TEXTS

    p = subparsers.add_parser(
        "annotate", help="predict the cell type of every cell",
        description="Writes obs['c2s_cell_type'] (and obs['c2s_confidence'] when candidate "
                    "labels are scored) and provenance in uns['c2s']['annotate'].")
    _add_input_options(p)
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels-from", metavar="COL", default=None,
                        help="obs column whose distinct values are the candidate labels (also "
                             "the truth for accuracy and macro-F1)")
    labels.add_argument("--labels", metavar="FILE", default=None,
                        help="candidate labels: one per line, or a CSV/TSV with a 'label' column")
    p.add_argument("--truth", metavar="COL", default=None,
                   help="obs column of true labels to report accuracy against")
    p.add_argument("--groupby", metavar="COL", default=None,
                   help="obs column of clusters: majority label and agreement per cluster")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="auto: score when candidates are given, else generate free text")
    p.add_argument("--tie-orders", type=int, default=1, metavar="N",
                   help="score each cell in N orders of its equally expressed genes and average "
                        "the label probabilities (steadier labels, N times the scoring time)")
    add_model_options(p, generating=True, out_required=True, out_help="output .h5ad")
    p.set_defaults(func=cmd_annotate)

    p = subparsers.add_parser("embed", help="embed every cell into obsm['X_c2s']")
    _add_input_options(p)
    p.add_argument("--hidden-layer", type=int, default=-1, metavar="N",
                   help="hidden layer to pool (0 = token embeddings, -1 = last)")
    p.add_argument("--text", choices=TEXTS, default="prompt",
                   help="embed the cell-type prompt around the sentence (default) or the bare "
                        "sentence")
    add_model_options(p, generating=False, out_required=True, out_help="output .h5ad")
    p.set_defaults(func=cmd_embed)

    p = subparsers.add_parser(
        "generate", help="generate cells of a cell type or tissue as expression",
        description="Writes an .h5ad of generated cells over the reference's genes "
                    "(obs['c2s_generated'] is True).")
    condition = p.add_mutually_exclusive_group(required=True)
    condition.add_argument("--cell-type", action="append", metavar="T",
                           help="cell type to generate (repeat for several)")
    condition.add_argument("--tissue", action="append", metavar="T",
                           help="tissue to generate cells of (repeat for several)")
    p.add_argument("--n", type=int, default=10, help="cells per condition (default 10)")
    _add_reference_options(p)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    add_model_options(p, generating=True, out_required=True, out_help="output .h5ad")
    p.set_defaults(func=cmd_generate)

