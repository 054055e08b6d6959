"""Spatial neighborhoods page: cells in space, their neighbourhoods, and the model's spatial
tasks (niche labels, same-neighbourhood test, neighbour generation)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from scipy.spatial import cKDTree

from c2s_engine.errors import C2SError, InteractionTableError
from c2s_engine.tasks import spatial as spatial_task
from c2s_engine.tasks.ligrec import load_ligrec
from c2s_engine.tasks.neighborhoods import CONNECTIVITIES_KEY, DEFAULT_N_NEIGHBORS
from webapp import components, models, plots, saved_results, state

JOB_KEY = "c2s_spatial_job"
MESSAGE_KEY = "c2s_spatial_message"
LIGREC_KEY = "c2s_spatial_ligrec"
GENERATED_KEY = "c2s_spatial_generated"
GENERATED = "spatial_generated"
NICHE, SAME, NEIGHBOR = spatial_task.NICHE_TASK, spatial_task.SAME_TASK, spatial_task.NEIGHBOR_TASK
RADIUS, KNN = "Within a radius", "k nearest cells"
FROM_COLUMN, TYPED, FREE_TEXT = "From an obs column", "Typed list", "None: the model names them"
SAMPLE, SELECTED, EVERY = "A random sample", "Cells selected on the map", "All cells"
CENTER, CENTERS_SELECTED = "The centre cell shown on the map", "Cells selected on the map"
NONE, GENE = "(none)", "A gene..."
_NICHE_HINT = re.compile(r"niche|region|domain|layer|zone", re.IGNORECASE)
_LABEL_HINT = re.compile(r"cell.?type|label|annot|cluster", re.IGNORECASE)

st.title("Spatial neighborhoods")
st.write(
    "Look at cells where they sit in the tissue, group them into neighbourhoods (all cells "
    "within a radius, or each cell's nearest cells), and ask the model about them: which niche "
    "a cell belongs to, whether a set of cells shares a neighbourhood, and what a new cell in a "
    "neighbourhood would look like. A ligand-receptor table can be given as extra context."
)


def spatial_key(dataset: state.LoadedDataset) -> str | None:
    """obsm key of the coordinates: the one the validation report found, else ``'spatial'``."""
    key = dataset.report.spatial.get("key") if dataset.report.spatial else None
    if key in dataset.adata.obsm:
        return key
    return "spatial" if "spatial" in dataset.adata.obsm else None


def suggested_radius(coords: np.ndarray, k: int = DEFAULT_N_NEIGHBORS) -> float:
    """A radius holding about ``k`` neighbours for a typical cell: the median distance to the
    ``k``-th nearest cell, rounded to two significant digits."""
    k = max(1, min(k, coords.shape[0] - 1))
    distance = float(np.median(cKDTree(coords).query(coords, k=k + 1)[0][:, -1]))
    return float(f"{distance:.2g}") if distance > 0 else 1.0


def _explain_missing(dataset: state.LoadedDataset) -> None:
    found = ", ".join(dataset.adata.obsm.keys()) or "none"
    st.info("This dataset has no spatial coordinates, so this page has nothing to show. "
            f"Fix: store each cell's x/y position as an n_cells x 2 array in "
            f"adata.obsm['spatial'] (obsm keys now: {found}), save the file as .h5ad and load it "
            "on the Upload data page. Readers of spatial platforms (squidpy, scanpy.read_visium) "
            "do this for you; for a table of coordinates:", icon=":material/info:")
    st.code("import anndata as ad, pandas as pd\n"
            "adata = ad.read_h5ad('cells.h5ad')\n"
            "xy = pd.read_csv('coordinates.csv', index_col=0).loc[adata.obs_names]\n"
            "adata.obsm['spatial'] = xy[['x', 'y']].to_numpy()\n"
            "adata.write_h5ad('cells_with_coordinates.h5ad')", language="python")
    st.page_link(st.Page(state.UPLOAD_SCRIPT, title="Upload data"),
                 label="Go to Upload data", icon=":material/upload_file:")


def _keep(dataset: state.LoadedDataset, work, text: str) -> bool:
    """Make ``work`` the dataset and save it; False when another dataset was loaded meanwhile."""
    if st.session_state.get(state.DATASET_KEY) is not dataset:
        st.session_state[MESSAGE_KEY] = ("warning", "The run finished after another dataset was "
                                         "loaded, so its results were not kept.")
        return False
    dataset.adata = work
    st.session_state[MESSAGE_KEY] = ("success", text)
    try:
        state.save_dataset(st.session_state)
    except C2SError as err:
        st.session_state[MESSAGE_KEY] = ("warning", f"{text} {err}")
    return True


def _apply(outcome: components.JobOutcome) -> None:
    """Keep a finished run's results, or say why there are none; earlier results stay intact."""
    if outcome.status != "done":
        kind = "warning" if outcome.status == "cancelled" else "error"
        st.session_state[MESSAGE_KEY] = (kind, outcome.message)
        return
    task, dataset, work, result = outcome.result
    took = components.format_duration(outcome.seconds)
    if task == NICHE:
        text = f"Predicted the niche of {len(result.labels):,} cells in {took}."
    elif task == SAME:
        text = f"Answered {len(result.table):,} same-neighbourhood questions in {took}."
    else:
        text = f"Generated {result.n_obs:,} neighbour cells in {took}."
    if not _keep(dataset, work, text):
        return
    if task == NICHE:
        # Show the new predictions on the map.
        st.session_state["c2s_sp_color"] = work.uns["c2s"]["spatial_niche"]["params"][
            "key_added"]
    if task != NEIGHBOR:
        return
    try:
        saved_results.keep_result(st.session_state, GENERATED_KEY, NEIGHBOR,
                                  {GENERATED: result})
    except C2SError as err:
        st.session_state[MESSAGE_KEY] = ("warning", f"{text} {err}")


def _start(task: str, dataset: state.LoadedDataset, call) -> None:
    """Run ``call(work, progress, cancel)`` on a working copy in the background."""
    work = state.working_copy(dataset.adata)

    def run(progress, cancel):
        return task, dataset, work, call(work, progress, cancel)

    doing = {NICHE: "predicting niche labels", SAME: "testing neighbourhoods",
             NEIGHBOR: "generating neighbour cells"}[task]
    st.session_state.pop(MESSAGE_KEY, None)
    components.start_job(st.session_state, JOB_KEY,
                         components.BackgroundJob(run, doing=doing,
                                                  unit="questions" if task == SAME else "cells"))


def _neighborhoods(dataset: state.LoadedDataset, key: str, coords: np.ndarray,
                   running: bool) -> tuple[float | None, str]:
    """Neighbourhood settings and the build button; returns the radius to draw and the centre."""
    adata = dataset.adata
    st.subheader("Neighbourhoods")
    left, middle, right = st.columns(3)
    method = left.radio("Neighbours of a cell", [RADIUS, KNN], key="c2s_sp_method")
    if method == RADIUS:
        radius = middle.number_input("Radius (coordinate units)", min_value=0.0,
                                     value=suggested_radius(coords), key="c2s_sp_radius",
                                     help="Default: the median distance to a cell's 6th "
                                          "nearest cell.")
        k = None
    else:
        k = int(middle.number_input("Neighbours per cell (k)", 1, max(1, adata.n_obs - 1),
                                    min(DEFAULT_N_NEIGHBORS, max(1, adata.n_obs - 1)),
                                    key="c2s_sp_k"))
        radius = None
    middle_cell = int(np.argmin(((coords - coords.mean(axis=0)) ** 2).sum(axis=1)))
    names = list(adata.obs_names)
    center = right.selectbox("Centre cell (drawn on the map)", names, index=middle_cell,
                             key="c2s_sp_center")
    drawn = radius
    if k is not None:
        # Show the kNN neighbourhood as the circle reaching the centre's k-th nearest cell.
        distances = cKDTree(coords).query(coords[names.index(center)], k=k + 1)[0]
        drawn = float(np.atleast_1d(distances)[-1])
    if st.button("Build neighbourhoods", key="c2s_sp_build", disabled=running,
                 icon=":material/hub:"):
        work = state.working_copy(adata)
        try:
            summary = spatial_task.spatial_neighbors(work, radius=radius, n_neighbors=k, key=key)
        except C2SError as err:
            st.session_state[MESSAGE_KEY] = ("error", str(err))
        else:
            _keep(dataset, work, f"Built neighbourhoods: {summary.mean_neighbors:.1f} neighbours "
                                 f"per cell on average, {summary.n_isolated:,} cells without "
                                 "neighbours.")
    built = dataset.adata.uns.get("c2s", {}).get("spatial_neighbors")
    if built and CONNECTIVITIES_KEY in dataset.adata.obsp:
        how = (f"radius {float(built['radius']):g}" if built["method"] == "radius"
               else f"{int(built['n_neighbors'])} nearest cells")
        graph = dataset.adata.obsp[CONNECTIVITIES_KEY]
        row = dataset.adata.obs_names.get_loc(center)
        st.caption(f"Current neighbourhoods: {how}; {float(built['mean_neighbors']):.1f} "
                   f"neighbours per cell on average, {int(built['n_isolated']):,} isolated; "
                   f"the centre cell has {graph[row].nnz} neighbours.")
    else:
        st.caption("No neighbourhoods yet: the same-neighbourhood test and neighbour generation "
                   "need them.")
    return drawn, center


def _map(dataset: state.LoadedDataset, key: str, radius: float | None, center: str) -> None:
    adata = dataset.adata
    st.subheader("Cells in space")
    columns = list(adata.obs.columns)
    first = [c for c in ("c2s_niche",) if c in columns]
    options = [*first, *(c for c in columns if c not in first), GENE]
    default = 0 if first else next(
        (i for i, c in enumerate(options) if _NICHE_HINT.search(c)),
        next((i for i, c in enumerate(options) if _LABEL_HINT.search(c)), 0))
    left, right = st.columns([2, 1])
    color = left.selectbox("Colour cells by", options, index=default, key="c2s_sp_color")
    if color == GENE:
        color = right.selectbox("Gene", list(adata.var_names), key="c2s_sp_gene")
    try:
        figure = plots.spatial_figure(adata, color, spatial_key=key, radius=radius,
                                      center=center)
    except C2SError as err:
        st.error(str(err))
        return
    event = st.plotly_chart(figure, on_select="rerun", selection_mode=("lasso", "box"),
                            key="c2s_sp_map")
    picked = plots.selected_cells(event)
    if picked:
        st.session_state[state.SELECTION_KEY] = picked
    selection = [n for n in st.session_state.get(state.SELECTION_KEY) or []
                 if n in adata.obs_names]
    st.caption("The red circle shows the neighbourhood of the centre cell. Draw a lasso or a "
               "box to select cells" + (f" ({len(selection):,} selected)." if selection else "."))


def _read_table(name: str, data: bytes) -> pd.DataFrame:
    sep = "\t" if Path(name).suffix.lower() in (".tsv", ".txt") else ","
    try:
        return pd.read_csv(io.BytesIO(data), sep=sep, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InteractionTableError(f"{name} cannot be read as a table "
                                    f"({' '.join(str(exc).split())})",
                                    "save it as a comma-separated CSV with a header row") from exc


def _ligrec() -> dict:
    """The optional ligand-receptor context, as keyword arguments of the spatial tasks."""
    with st.expander("Ligand-receptor context (optional)"):
        st.caption("Upload a table of ligand-receptor pairs (CSV or TSV, e.g. from CellChatDB or "
                   "CellPhoneDB). The pairs whose genes are expressed in a prompt's cells are "
                   "written before the prompt.")
        upload = st.file_uploader("Ligand-receptor table", type=["csv", "tsv", "txt"],
                                  key="c2s_sp_ligrec")
        if upload is None:
            return {}
        held = st.session_state.get(LIGREC_KEY)
        if held is None or held[0] != upload.file_id:
            try:
                held = (upload.file_id, _read_table(upload.name, upload.getvalue()))
            except C2SError as err:
                st.error(str(err))
                return {}
            st.session_state[LIGREC_KEY] = held
        frame = held[1]
        names = [str(c) for c in frame.columns]
        lower = [n.casefold() for n in names]
        left, middle, right = st.columns(3)
        ligand = left.selectbox("Ligand column", names, key="c2s_sp_ligand",
                                index=lower.index("ligand") if "ligand" in lower else 0)
        receptor = middle.selectbox("Receptor column", names, key="c2s_sp_receptor",
                                    index=lower.index("receptor") if "receptor" in lower
                                    else min(1, len(names) - 1))
        limit = right.number_input("Most pairs per prompt", 1, 200, 20, key="c2s_sp_max_pairs")
        if ligand == receptor:
            st.error(f"The ligand and receptor columns are both {ligand!r}. Fix: choose the "
                     "column of ligand genes and the column of receptor genes.")
            return {}
        try:
            pairs = load_ligrec(frame, (ligand, receptor))
        except C2SError as err:
            st.error(str(err))
            return {}
        st.caption(f"{len(pairs):,} pairs loaded from {upload.name}.")
        return {"ligrec": frame, "ligrec_columns": (ligand, receptor),
                "max_interactions": int(limit)}


def _niche_tab(dataset: state.LoadedDataset, loaded, context: dict, running: bool) -> None:
    adata = dataset.adata
    label_columns = [c for c in dataset.report.label_columns if c in adata.obs]
    sources = [FROM_COLUMN, TYPED, FREE_TEXT] if label_columns else [TYPED, FREE_TEXT]
    source = st.radio("Candidate niches", sources, horizontal=True, key="c2s_sp_niche_source")
    labels = labels_from = None
    left, right = st.columns(2)
    with left:
        if source == FROM_COLUMN:
            labels_from = st.selectbox(
                "Candidates: the values of", label_columns, key="c2s_sp_niche_from",
                index=next((i for i, c in enumerate(label_columns) if _NICHE_HINT.search(c)), 0))
        elif source == TYPED:
            text = st.text_area("Candidate niches (one per line or comma-separated)",
                                key="c2s_sp_niche_labels", placeholder="Layer 4\nWhite matter")
            labels = [v.strip() for v in re.split(r"[\n,]", text) if v.strip()]
        truth_options = [NONE, *label_columns]
        truth = st.selectbox("Compare with existing niches in", truth_options,
                             index=truth_options.index(labels_from) if labels_from else 0,
                             key="c2s_sp_niche_truth")
    selection = [n for n in st.session_state.get(state.SELECTION_KEY) or []
                 if n in adata.obs_names]
    with right:
        which = st.radio("Cells", [SAMPLE, *([SELECTED] if selection else []), EVERY],
                         key="c2s_sp_niche_cells", horizontal=True)
        n_cells = st.number_input("Cells in the sample", 1, adata.n_obs, min(100, adata.n_obs),
                                  key="c2s_sp_niche_n", disabled=which != SAMPLE)
        top_k = st.number_input("Genes per cell sentence", 1, 2000, int(loaded.card.top_k),
                                key="c2s_sp_niche_top_k")
    if not st.button("Predict niches", type="primary", key="c2s_sp_niche_run",
                     disabled=running, icon=":material/play_arrow:"):
        return
    if source == TYPED and not labels:
        st.session_state[MESSAGE_KEY] = ("error", "No candidate niches were typed. Fix: type at "
                                         "least one, or choose another source of candidates.")
        return
    if which == SAMPLE:
        rng = np.random.default_rng(0)
        cells = np.sort(rng.choice(adata.n_obs, size=int(n_cells), replace=False))
    else:
        cells = selection if which == SELECTED else None
    options = {"labels": labels, "labels_from": labels_from,
               "true_key": None if truth == NONE else truth, "cells": cells,
               "top_k": int(top_k), **context}
    _start(NICHE, dataset, lambda work, progress, cancel: spatial_task.predict_niche(
        work, loaded, progress=progress, cancel=cancel, **options))


def _niche_results(dataset: state.LoadedDataset) -> None:
    adata = dataset.adata
    prov = adata.uns.get("c2s", {}).get("spatial_niche")
    key = prov.get("params", {}).get("key_added") if prov else None
    if not key or key not in adata.obs:
        return
    st.caption(f"Last run: {prov['params']['n_cells']} cells, {prov['model']}, {prov['time']}"
               + (", with ligand-receptor context." if prov["params"].get("ligrec") else "."))
    metrics = prov.get("metrics")
    if metrics:
        accuracy, f1, cells = st.columns(3)
        accuracy.metric("Accuracy", f"{float(metrics['accuracy']):.1%}")
        f1.metric("Macro-F1", f"{float(metrics['macro_f1']):.3f}")
        cells.metric("Cells compared", f"{int(metrics['n_cells']):,}")
        st.plotly_chart(plots.confusion_figure(
            metrics["confusion"], list(metrics["labels"]), int(metrics["n_true_labels"]),
            title="True vs predicted niches"), key="c2s_sp_niche_confusion")
    columns = [c for c in (key, f"{key}_confidence", metrics.get("truth_key") if metrics
                           else None) if c and c in adata.obs]
    predicted = adata.obs.loc[adata.obs[key].notna(), columns]
    st.dataframe(predicted[key].astype(str).value_counts().rename("cells").to_frame(),
                 key="c2s_sp_niche_counts")
    components.download_csv(predicted, "niche_predictions.csv", key="c2s_sp_dl_niche",
                            label="Niche predictions (CSV)")


def _needs_graph(dataset: state.LoadedDataset) -> bool:
    if CONNECTIVITIES_KEY in dataset.adata.obsp:
        return False
    st.info("Build neighbourhoods first (above the map): this task draws its cells from them.",
            icon=":material/info:")
    return True


def _same_tab(dataset: state.LoadedDataset, loaded, context: dict, running: bool) -> None:
    if _needs_graph(dataset):
        return
    left, middle, right = st.columns(3)
    n_pairs = left.number_input("Centre cells", 1, 1000, 20, key="c2s_sp_same_pairs",
                                help="Each gives one set of neighbours and one of distant cells.")
    max_cells = middle.number_input("Most cells per set", 2, 50, 6, key="c2s_sp_same_cells")
    seed = right.number_input("Seed", 0, 2**31 - 1, 0, key="c2s_sp_same_seed")
    if not st.button("Test neighbourhoods", type="primary", key="c2s_sp_same_run",
                     disabled=running, icon=":material/play_arrow:"):
        return
    options = {"n_pairs": int(n_pairs), "max_cells": int(max_cells), "seed": int(seed),
               **context}
    _start(SAME, dataset, lambda work, progress, cancel: spatial_task.predict_same_neighborhood(
        work, loaded, progress=progress, cancel=cancel, **options))


def _same_results(dataset: state.LoadedDataset) -> None:
    prov = dataset.adata.uns.get("c2s", {}).get("spatial_same_neighborhood")
    if not prov:
        return
    table = pd.DataFrame({c: np.asarray(v) for c, v in prov["table"].items()})
    st.caption(f"Last run: {len(table)} cell sets, {prov['model']}, {prov['time']}.")
    overall, positive, negative = st.columns(3)
    overall.metric("Accuracy", f"{float(prov['accuracy']):.1%}")
    for column, name, label in ((positive, "accuracy_positive", "Neighbour sets right"),
                                (negative, "accuracy_negative", "Distant sets right")):
        value = float(prov[name])
        column.metric(label, "-" if np.isnan(value) else f"{value:.1%}")
    st.plotly_chart(plots.confusion_figure(prov["confusion"], ["yes", "no"], 2,
                                           title="Same neighbourhood: truth vs answer"),
                    key="c2s_sp_same_confusion")
    st.dataframe(table, key="c2s_sp_same_table")
    components.download_csv(table, "same_neighborhood.csv", key="c2s_sp_dl_same",
                            label="Questions and answers (CSV)")


def _generate_tab(dataset: state.LoadedDataset, loaded, context: dict, center: str,
                  running: bool) -> None:
    if _needs_graph(dataset):
        return
    adata = dataset.adata
    selection = [n for n in st.session_state.get(state.SELECTION_KEY) or []
                 if n in adata.obs_names]
    which = st.radio("Neighbourhoods of", [CENTER, *([CENTERS_SELECTED] if selection else [])],
                     key="c2s_sp_gen_centers", horizontal=True)
    left, middle, right = st.columns(3)
    n = left.number_input("Cells per neighbourhood", 1, 100, 3, key="c2s_sp_gen_n")
    max_cells = middle.number_input("Most context cells", 1, 50, 8, key="c2s_sp_gen_cells")
    sample = right.checkbox("Sample (varied cells)", value=True, key="c2s_sp_gen_sample",
                            help="Greedy decoding would give the same cell every time.")
    if not st.button("Generate neighbour cells", type="primary", key="c2s_sp_gen_run",
                     disabled=running, icon=":material/play_arrow:"):
        return
    centers = [center] if which == CENTER else selection
    options = {"center_cells": centers, "n": int(n), "max_cells": int(max_cells),
               "do_sample": bool(sample), "spatial_key": spatial_key(dataset) or "spatial",
               **context}
    _start(NEIGHBOR, dataset, lambda work, progress, cancel: spatial_task.generate_neighbors(
        work, loaded, progress=progress, cancel=cancel, **options))


def _generated_results(dataset: state.LoadedDataset) -> None:
    tables = saved_results.current_result(st.session_state, GENERATED_KEY, NEIGHBOR,
                                          (GENERATED,))
    if tables is None:
        return
    generated = tables[GENERATED]
    prov = generated.uns["c2s"][NEIGHBOR]
    st.caption(f"Last run: {generated.n_obs} cells, {prov['model']}, {prov['time']}.")
    shown = generated.obs[["c2s_center_cell", "c2s_n_context_cells", "n_genes_reconstructed",
                           "cell_sentence"]]
    st.dataframe(shown, key="c2s_sp_gen_table")
    stem = re.sub(r"\.h5ad$", "", state.safe_filename(dataset.name)) or "dataset"
    components.download_h5ad(generated, f"{stem}_generated_neighbors.h5ad",
                             key="c2s_sp_dl_generated",
                             label="Generated cells (.h5ad, with provenance)")


def _task_tab(loaded, task: str, title: str, body) -> None:
    """The tab of one model task: the task's form and results, or the models that can do it."""
    if loaded is None:
        st.error(models.model_error(st.session_state) or "No model is loaded.")
        st.caption("Choose another model in the sidebar under Change model.")
    elif not loaded.card.supports(task):
        components.task_not_supported(task, title, loaded)
    else:
        body()


def main() -> None:
    dataset: state.LoadedDataset | None = st.session_state.get(state.DATASET_KEY)
    if dataset is None:
        st.info("No dataset is loaded. Fix: load your data, or the example dataset, on the "
                "Upload data page first.", icon=":material/info:")
        st.page_link(st.Page(state.UPLOAD_SCRIPT, title="Upload data"),
                     label="Go to Upload data", icon=":material/upload_file:")
        return
    key = spatial_key(dataset)
    if key is None:
        _explain_missing(dataset)
        return
    try:
        coords = np.asarray(dataset.adata.obsm[key], dtype=np.float64)[:, :2]
        if not np.isfinite(coords).all():
            raise ValueError("coordinates are not all finite")
    except (TypeError, ValueError, IndexError):
        st.error(f"obsm['{key}'] does not hold finite x/y coordinates for every cell. Fix: store "
                 "an n_cells x 2 array of numbers there (drop cells without a position) and "
                 "load the file again.")
        return
    outcome = components.collect_job(st.session_state, JOB_KEY)
    if outcome is not None:
        _apply(outcome)
    running = components.job_running(st.session_state, JOB_KEY)
    radius, center = _neighborhoods(dataset, key, coords, running)
    _map(dataset, key, radius, center)
    context = _ligrec()
    # Filled after the tabs, whose buttons start jobs and set messages during this run.
    status = st.container()
    loaded = models.current_model(st.session_state)

    def niche() -> None:
        _niche_tab(dataset, loaded, context, running)
        _niche_results(dataset)

    def same() -> None:
        _same_tab(dataset, loaded, context, running)
        _same_results(dataset)

    def generate() -> None:
        _generate_tab(dataset, loaded, context, center, running)
        _generated_results(dataset)

    tabs = st.tabs(["Niche labels", "Same neighbourhood?", "Generate neighbours"])
    for tab, task, title, body in zip(tabs, (NICHE, SAME, NEIGHBOR), (
            "Spatial niche label prediction", "Same-neighbourhood prediction",
            "Spatial neighbour generation"), (niche, same, generate), strict=True):
        with tab:
            _task_tab(loaded, task, title, body)
    with status:
        if components.job_running(st.session_state, JOB_KEY):
            components.progress_panel(JOB_KEY)
        message = st.session_state.get(MESSAGE_KEY)
        if message is not None:
            getattr(st, message[0])(message[1])
    st.subheader("Download")
    stem = re.sub(r"\.h5ad$", "", state.safe_filename(dataset.name)) or "dataset"
    components.download_h5ad(dataset.adata, f"{stem}_spatial.h5ad", key="c2s_sp_dl_h5ad",
                             label="Dataset with neighbourhoods and results (.h5ad)")


main()
