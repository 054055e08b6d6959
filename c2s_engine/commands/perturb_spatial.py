"""``c2s perturb`` and ``c2s spatial``: perturbation response and the spatial tasks."""

from __future__ import annotations

import argparse
import sys

from c2s_engine.commands.common import (
    add_model_options,
    cache_arg,
    check_out_path,
    load_input,
    load_model_from_args,
    progress_bar,
)
from c2s_engine.errors import TaskOptionError

H5AD = (".h5ad",)


def cmd_perturb(args: argparse.Namespace) -> int:
    from c2s_engine.tasks.perturb import predict_perturbation

    out = check_out_path(args.out, H5AD)
    if (args.control_from is None) != (args.control is None):
        raise TaskOptionError("--control-from and --control go together",
                              "pass both, e.g. --control-from condition --control control, "
                              "or neither to use every cell as a control")
    adata = load_input(args)
    model = load_model_from_args(args)
    predicted = predict_perturbation(
        adata, args.perturbation, model, control_key=args.control_from,
        control_value=args.control, n=args.n, top_k=args.top_k, seed=args.seed,
        do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, contrast_weight=args.contrast_weight,
        contrast_key=args.contrast_by, batch_size=args.batch_size,
        progress=progress_bar(args, "perturb"), cache=cache_arg(args),
        allow_unsupported=args.allow_unsupported)
    predicted.write_h5ad(out)
    params = predicted.uns["c2s"]["perturb"]["params"]
    totals = predicted.uns["c2s"]["reconstruction"]
    print(f"predicted {predicted.n_obs} cells under {args.perturbation} from "
          f"{params['n_unique_controls']} of {params['n_controls']} control cells; "
          f"{totals['n_unknown_words']} of {totals['n_words']} generated words are not genes "
          f"of the data; wrote {out}")
    return 0


def _ligrec_columns(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise TaskOptionError(f"--ligrec-columns {text!r} does not name two columns",
                              "write LIGAND,RECEPTOR, e.g. --ligrec-columns ligand,receptor")
    return parts[0], parts[1]


def cmd_spatial(args: argparse.Namespace) -> int:
    from c2s_engine.tasks.spatial import predict_niche, predict_same_neighborhood, spatial_neighbors

    out = check_out_path(args.out, H5AD)
    columns = _ligrec_columns(args.ligrec_columns)
    if columns is not None and args.ligrec is None:
        raise TaskOptionError("--ligrec-columns was given without --ligrec",
                              "pass the ligand-receptor table with --ligrec FILE")
    adata = load_input(args)
    summary = spatial_neighbors(adata, radius=args.radius, n_neighbors=args.k,
                                key=args.spatial_key)
    how = f"radius {summary.radius:g}" if summary.method == "radius" else \
        f"{summary.n_neighbors} nearest cells"
    print(f"neighbourhoods ({how}): {summary.mean_neighbors:.1f} neighbours per cell on "
          f"average, {summary.n_isolated} cells without neighbours", file=sys.stderr)

    model = load_model_from_args(args)
    common = {"top_k": args.top_k, "ligrec": args.ligrec, "ligrec_columns": columns,
              "batch_size": args.batch_size, "cache": cache_arg(args),
              "allow_unsupported": args.allow_unsupported}
    niche = predict_niche(adata, model, labels_from=args.niche_labels_from,
                          max_new_tokens=args.max_new_tokens,
                          progress=progress_bar(args, "niche"), **common)
    lines = [f"niche labels of {len(niche.labels)} cells in obs['c2s_niche']"]
    if niche.metrics:
        lines.append(f"niche accuracy {niche.metrics['accuracy']:.3f}, macro-F1 "
                     f"{niche.metrics['macro_f1']:.3f} against obs['{niche.metrics['truth_key']}']")
    if args.n_pairs > 0 and summary.n_isolated < adata.n_obs:
        same = predict_same_neighborhood(adata, model, n_pairs=args.n_pairs,
                                         max_cells=args.max_cells, seed=args.seed,
                                         progress=progress_bar(args, "same neighbourhood"),
                                         **common)
        lines.append(f"same-neighbourhood accuracy {same.accuracy:.3f} on {len(same.table)} "
                     "cell sets in uns['c2s']['spatial_same_neighborhood']")
    adata.write_h5ad(out)
    print("; ".join(lines) + f"; wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``perturb`` and ``spatial`` sub-commands."""
    from c2s_engine.cli import _add_input_options

    p = subparsers.add_parser(
        "perturb", help="predict perturbed cells from control cells",
        description="Writes an .h5ad of predicted perturbed cells over the input's genes "
                    "(obs['c2s_generated'] is True, obs['c2s_control_cell'] names the source "
                    "control) with provenance in uns['c2s']['perturb'].")
    _add_input_options(p)
    p.add_argument("--perturbation", required=True, metavar="P",
                   help="the perturbation in words, e.g. IFN-beta")
    p.add_argument("--n", type=int, default=None,
                   help="cells to predict, drawn from the controls with --seed (default: every "
                        "control once)")
    p.add_argument("--control-from", metavar="COL", default=None,
                   help="obs column that marks the control cells (with --control)")
    p.add_argument("--control", metavar="VALUE", default=None,
                   help="value of --control-from that control cells have")
    p.add_argument("--do-sample", action="store_true",
                   help="sample instead of greedy decoding (repeated controls then differ)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    p.add_argument("--contrast-weight", type=float, default=0.0, metavar="W",
                   help="contrastive guidance: sharpen what each answer owes to its own control "
                        "against the same prompt holding another control (0: off; "
                        "kang-perturbation's card recommends 1 with --temperature 0.6)")
    p.add_argument("--contrast-by", metavar="COL", default=None,
                   help="with --contrast-weight, contrast each control only with controls of "
                        "another value of this obs column (e.g. cell_type)")
    add_model_options(p, generating=True, out_required=True, out_help="output .h5ad")
    p.set_defaults(func=cmd_perturb)

    p = subparsers.add_parser(
        "spatial", help="spatial neighbourhoods, niche labels and same-neighbourhood accuracy",
        description="Builds the neighbour graph (obsp['c2s_spatial_connectivities']), predicts "
                    "obs['c2s_niche'] and scores same-neighbourhood questions "
                    "(uns['c2s']['spatial_same_neighborhood']), then writes the .h5ad.")
    _add_input_options(p)
    graph = p.add_mutually_exclusive_group()
    graph.add_argument("--radius", type=float, default=None,
                       help="neighbours within this distance (units of the coordinates)")
    graph.add_argument("--k", type=int, default=None,
                       help="the k nearest cells are neighbours (default 6 without --radius)")
    p.add_argument("--spatial-key", default="spatial",
                   help="obsm key of the coordinates (default spatial)")
    p.add_argument("--niche-labels-from", metavar="COL", default=None,
                   help="obs column whose values are the candidate niche labels (scored) and "
                        "the truth for accuracy; free text without it")
    p.add_argument("--ligrec", metavar="FILE", default=None,
                   help="CSV of ligand-receptor pairs (columns ligand, receptor) added as "
                        "context to the prompts")
    p.add_argument("--ligrec-columns", metavar="LIGAND,RECEPTOR", default=None,
                   help="the ligand and receptor column names of --ligrec")
    p.add_argument("--n-pairs", type=int, default=20,
                   help="center cells for the same-neighbourhood questions (0 to skip)")
    p.add_argument("--max-cells", type=int, default=8,
                   help="most cells per same-neighbourhood question")
    add_model_options(p, generating=True, out_required=True, out_help="output .h5ad")
    p.set_defaults(func=cmd_spatial)
