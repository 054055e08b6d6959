"""Simulate perturbations page: predicted perturbed cells from control cells, compared with the
controls and, when the data has them, the real perturbed cells."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from c2s_engine import compare_view
from c2s_engine.errors import C2SError, MetricError, ObsColumnError
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE
from c2s_engine.tasks import perturb as perturb_task
from c2s_engine.tasks.perturb import label_columns
from webapp import components, genesets, plots, saved_results, state
from webapp.page_setup import finished_result, job_page

TASK = perturb_task.TASK
TASK_KEY = "perturb"  # uns['c2s'] key of the task's provenance
JOB_KEY = "c2s_perturb_job"
MESSAGE_KEY = "c2s_perturb_message"
RESULT_KEY = "c2s_perturb_result"
GMT_KEY = "c2s_perturb_gmt"
PREDICTED, JOINT = "perturb_predicted", "perturb_joint"
CONTROL, REAL, PREDICTED_GROUP = "control", "real perturbed", "predicted"
BY_VALUE, BY_SELECTION = "Cells with a value in a column", "Cells selected on a plot"
NONE, ALL, OTHER = "(none)", "(all cells)", "Other (type it)"
BUILT_IN, UPLOAD = "Built-in", "Upload a GMT file"
GENE = "A gene..."
DEFAULT_CELLS = 50
_CONDITION_HINT = re.compile(r"condition|stim|treat|perturb|group|sample", re.IGNORECASE)
_CONTROL_HINT = re.compile(r"^(control|ctrl|unstim\w*|untreated|vehicle|dmso|baseline|mock)$",
                           re.IGNORECASE)

st.title("Simulate perturbations")
st.write(
    "Predict how control cells respond to a perturbation (for example a cytokine or a drug): "
    "the model rewrites each control cell's gene ranking as the perturbed cell. The predicted "
    "cells are drawn on one map with the controls and, when your data has them, the real "
    "perturbed cells, and compared gene by gene."
)


def card_perturbations(training: Mapping[str, Any]) -> dict[str, str]:
    """Perturbations a model was trained on, from its card's ``training`` record.

    A record may name them as ``perturbation_names`` (``{condition value: name}``, as in a
    training config's data section) or ``perturbations`` (a list of names), at any depth.
    Returns ``{condition value or name: name}``; empty when the card says nothing.
    """
    found: dict[str, str] = {}
    stack: list[Any] = [training]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            names = item.get("perturbation_names")
            if isinstance(names, Mapping):
                found.update({str(k): str(v) for k, v in names.items()})
            listed = item.get("perturbations")
            if isinstance(listed, list | tuple):
                found.update({str(v): str(v) for v in listed})
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


def _preferred(options: list[str], pattern: re.Pattern[str], default: int = 0) -> int:
    return next((i for i, name in enumerate(options) if pattern.search(name)), default)


def _values(adata, column: str) -> list[str]:
    values = adata.obs[column]
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [str(v) for v in values.cat.categories if (values == v).any()]
    return sorted({str(v) for v in values.dropna()})


def _apply(outcome: components.JobOutcome) -> None:
    """Keep a finished run's results, or say why there are none; earlier results stay intact."""
    finished = finished_result(outcome, MESSAGE_KEY, "The prediction finished after another "
                               "dataset was loaded, so it was not kept.")
    if finished is None:
        return
    dataset, work, predicted, joint = finished
    dataset.adata = work
    text = (f"Predicted {predicted.n_obs:,} perturbed cells in "
            f"{components.format_duration(outcome.seconds)}.")
    st.session_state[MESSAGE_KEY] = ("success", text)
    try:
        state.save_dataset(st.session_state)
        saved_results.keep_result(st.session_state, RESULT_KEY, TASK_KEY,
                                  {PREDICTED: predicted, JOINT: joint})
    except C2SError as err:
        st.session_state[MESSAGE_KEY] = ("warning", f"{text} {err}")


def _compare(work, control_mask: np.ndarray, real_mask: np.ndarray, predicted,
             condition_key: str | None):
    """The joint map and the metrics of a prediction (stored with the predicted cells)."""
    groups = {CONTROL: work[control_mask], REAL: work[real_mask], PREDICTED_GROUP: predicted}
    joint = compare_view.joint_cells(groups, genes=work.var_names)
    compare_view.joint_umap(joint)
    joint.uns["c2s"][TASK_KEY] = predicted.uns["c2s"][TASK_KEY]
    if real_mask.any():
        try:
            comparison = compare_view.prediction_metrics(
                groups[CONTROL], groups[REAL], predicted, condition_key=condition_key)
        except (MetricError, ObsColumnError) as err:
            # The prediction is still worth keeping; the reason shows where the metrics would.
            comparison = {"error": str(err)}
        predicted.uns["c2s"]["perturb_comparison"] = comparison
    return joint


def _contrast_follows_restriction() -> None:
    """Restricting to some cell types makes their column the contrast (Advanced settings):
    the contrast widget exists from the first run, so its default alone would never follow."""
    restrict = st.session_state.get("c2s_pt_restrict")
    if restrict not in (None, ALL, st.session_state.get("c2s_pt_column")):
        st.session_state["c2s_pt_contrast_by"] = restrict


def _settings(dataset: state.LoadedDataset, loaded, running: bool) -> None:
    adata = dataset.adata
    columns = [c for c in label_columns(adata) if 2 <= adata.obs[c].nunique() <= 500]
    selection = [n for n in st.session_state.get(state.SELECTION_KEY) or []
                 if n in adata.obs_names]
    sources = [BY_VALUE, BY_SELECTION] if selection else [BY_VALUE]
    if not columns and not selection:
        st.error("No obs column names groups of cells (such as a condition or a cell type), and "
                 "no cells are selected. Fix: add a condition column to your data, or select "
                 "control cells with the lasso on the Annotate page.")
        return
    source = st.radio("Control cells", sources, horizontal=True, key="c2s_pt_source",
                      help="The cells the perturbation is applied to.")
    left, right = st.columns(2)
    with left:
        condition = st.selectbox(
            "Condition column", columns or [NONE], key="c2s_pt_column",
            index=_preferred(columns, _CONDITION_HINT),
            help="The obs column telling control from perturbed cells.")
        values = _values(adata, condition) if condition in adata.obs else []
        control_value = None
        if source == BY_VALUE:
            control_value = st.selectbox("Control value", values, key="c2s_pt_control",
                                         index=_preferred(values, _CONTROL_HINT))
        else:
            st.caption(f"{len(selection):,} cells selected on a plot are the controls.")
        others = [v for v in values if v != control_value]
        real_options = [NONE, *others]
        real_value = st.selectbox(
            "Real perturbed cells (to compare with)", real_options, key="c2s_pt_real",
            index=1 if len(others) == 1 else 0,
            help="When your data holds perturbed cells, the prediction is scored against them.")
    with right:
        restrict = st.selectbox("Only cells of", [ALL, *columns], key="c2s_pt_restrict",
                                on_change=_contrast_follows_restriction,
                                help="For example one cell type, in controls and real cells.")
        kept = []
        if restrict != ALL:
            kept = st.multiselect("Values", _values(adata, restrict), key="c2s_pt_restrict_values")
    mask = np.ones(adata.n_obs, dtype=bool)
    if restrict != ALL and kept:
        mask &= adata.obs[restrict].astype(str).isin(kept).to_numpy()
    if source == BY_VALUE:
        control_mask = mask & (adata.obs[condition].astype(str) == control_value).to_numpy()
    else:
        control_mask = mask & adata.obs_names.isin(selection)
    real_mask = np.zeros(adata.n_obs, dtype=bool)
    if real_value != NONE:
        real_mask = mask & (adata.obs[condition].astype(str) == real_value).to_numpy()
    st.caption(f"{int(control_mask.sum()):,} control cells"
               + (f", {int(real_mask.sum()):,} real perturbed cells." if real_value != NONE
                  else "."))

    known = card_perturbations(loaded.card.training)
    names = list(dict.fromkeys(known.values()))
    left, right = st.columns(2)
    with left:
        if names:
            guess = known.get(str(real_value), names[0])
            choice = st.selectbox("Perturbation", [*names, OTHER], index=names.index(guess),
                                  key="c2s_pt_known",
                                  help="The perturbations this model's card says it was "
                                       "trained on, or another one typed.")
            perturbation = choice if choice != OTHER else st.text_input(
                "Perturbation (in words)", key="c2s_pt_text", placeholder="IFN-beta")
        else:
            perturbation = st.text_input(
                "Perturbation (in words)", key="c2s_pt_text", placeholder="IFN-beta",
                value="" if real_value == NONE else str(real_value),
                help="Name it the way the model was trained, e.g. IFN-beta.")
    with right:
        n_cells = st.number_input(
            "Cells to predict", 1, 5000, int(min(DEFAULT_CELLS, max(1, control_mask.sum()))),
            key="c2s_pt_n", help="Drawn from the controls (with repeats when more are asked).")
    recommended = loaded.card.decoding(TASK)
    with st.expander("Advanced"):
        a, b, c = st.columns(3)
        top_k = a.number_input("Genes per cell sentence", 1, 2000, int(loaded.card.top_k),
                               key="c2s_pt_top_k")
        seed = b.number_input("Seed", 0, 2**31 - 1, 0, key="c2s_pt_seed")
        batch_size = c.number_input("Batch size", 1, 256, DEFAULT_BATCH_SIZE, key="c2s_pt_batch")
        # Sampled answers keep a population's spread (greedy ones collapse each cell type
        # towards one sentence), so they are the default for a UMAP next to real cells.
        sample = a.checkbox("Sample (varied cells) instead of greedy", True, key="c2s_pt_sample")
        temperature = b.number_input("Temperature", 0.05, 5.0,
                                     float(recommended.get("temperature", 1.0)),
                                     key="c2s_pt_temperature",
                                     disabled=not sample)
        per_options = [NONE, *(name for name in columns if name != condition)]
        per = c.selectbox("Compare per", per_options, key="c2s_pt_per",
                          help="Metrics per value of this column (e.g. cell type), averaged.")
        contrast_by = a.selectbox(
            "Contrast with controls of another", per_options, key="c2s_pt_contrast_by",
            index=per_options.index(restrict) if restrict in per_options else 0,
            help="Contrastive guidance: each answer is sharpened against the same prompt "
                 "holding a control cell of another value of this column (another cell type). "
                 "What all cell types respond alike is left as it is; what is particular to "
                 "the cell's own type is kept, so fewer predictions drift towards the cell "
                 "types the model saw perturbed. Prediction takes about twice as long.")
        contrast_weight = b.number_input(
            "Contrast weight", 0.0, 5.0, float(recommended.get("contrast_weight", 0.75)),
            step=0.25, key="c2s_pt_contrast_weight", disabled=contrast_by == NONE,
            help="0 turns it off. The default is the model card's recommendation where it "
                 "gives one (kang-perturbation's was chosen on a cell type held out for "
                 "validation).")
    if not st.button("Predict perturbed cells", type="primary", disabled=running,
                     key="c2s_pt_run", icon=":material/play_arrow:"):
        return
    if not str(perturbation or "").strip():
        st.session_state[MESSAGE_KEY] = ("error", "No perturbation was named. Fix: type the "
                                         "perturbation in words, e.g. IFN-beta.")
        return
    if not control_mask.any():
        st.session_state[MESSAGE_KEY] = ("error", "No cell matches the control choice. Fix: "
                                         "choose another control value or fewer restrictions.")
        return
    work = state.working_copy(adata)
    options = {"cells": control_mask, "n": int(n_cells), "top_k": int(top_k),
               "seed": int(seed), "do_sample": bool(sample), "temperature": float(temperature),
               "batch_size": int(batch_size)}
    if contrast_by != NONE and contrast_weight > 0:
        # Controls of every group, the restriction aside: the other types are the contrast.
        # Never real perturbed cells: contrasting with them would cancel the response itself.
        if source == BY_VALUE:
            pool = (adata.obs[condition].astype(str) == control_value).to_numpy()
        elif real_value != NONE:
            pool = (adata.obs[condition].astype(str) != real_value).to_numpy()
        else:
            pool = np.ones(adata.n_obs, dtype=bool)
        options.update(contrast_weight=float(contrast_weight), contrast=pool,
                       contrast_key=contrast_by)
    label = str(perturbation).strip()

    def run(progress, cancel):
        predicted = perturb_task.predict_perturbation(work, label, loaded, progress=progress,
                                                      cancel=cancel, **options)
        if source == BY_VALUE:
            # The condition column came from the controls: it would call the predictions controls.
            predicted.obs = predicted.obs.drop(columns=[condition], errors="ignore")
        joint = _compare(work, control_mask, real_mask, predicted, None if per == NONE else per)
        return dataset, work, predicted, joint

    st.session_state.pop(MESSAGE_KEY, None)
    components.start_job(st.session_state, JOB_KEY,
                         components.BackgroundJob(run, doing="predicting perturbed cells"))


def _metric_rows(comparison: Mapping[str, Any]) -> pd.DataFrame:
    rows = {name: comparison[key]["summary"] for name, key in (
        ("Predicted vs real perturbed", "predicted_vs_real"),
        ("Controls vs real perturbed (baseline)", "control_vs_real"))}
    table = pd.DataFrame(rows).T.rename(columns={"scfid": "scFID", "mmd": "MMD",
                                                 "wasserstein": "Wasserstein"})
    return table.astype(float)


def _metrics(predicted) -> None:
    comparison = predicted.uns["c2s"].get("perturb_comparison")
    st.subheader("Predicted vs real perturbed cells")
    if comparison is None:
        st.caption("No real perturbed cells were chosen, so there is nothing to score the "
                   "prediction against.")
        return
    if "error" in comparison:
        st.warning(f"The metrics could not be computed: {comparison['error']}")
        return
    st.dataframe(_metric_rows(comparison), key="c2s_pt_metrics")
    delta = float(comparison["pearson_delta"])
    st.caption(
        "Lower is closer. scFID, MMD and Wasserstein compare the cells in a PCA of the real "
        "perturbed cells; a useful prediction is closer than the controls. Correlation of the "
        "real and predicted mean change from control (Pearson r over all genes): "
        + ("not defined (no change)." if np.isnan(delta) else f"{delta:.3f}."))


def _program(joint) -> str | None:
    """Gene-program choice and score table; returns the score column when computed."""
    st.subheader("Gene program score")
    left, right = st.columns([1, 2])
    kind = left.radio("Program", [BUILT_IN, UPLOAD], key="c2s_pt_program_kind")
    sets: dict[str, list[str]] = {}
    if kind == BUILT_IN:
        sets = genesets.BUILT_IN
    else:
        upload = right.file_uploader("GMT file", type=["gmt", "txt"], key="c2s_pt_gmt")
        if upload is None:
            return None
        held = st.session_state.get(GMT_KEY)
        if held is None or held[0] != upload.file_id:
            try:
                held = (upload.file_id, genesets.parse_gmt(upload.getvalue(), upload.name))
            except C2SError as err:
                st.error(str(err))
                return None
            st.session_state[GMT_KEY] = held
        sets = held[1]
    name = right.selectbox("Gene set", list(sets), key="c2s_pt_program")
    try:
        summary, info = compare_view.program_scores(joint, sets[name])
    except C2SError as err:
        st.error(str(err))
        return None
    st.dataframe(summary, key="c2s_pt_program_table")
    st.caption(f"{len(info['genes_used'])} of {info['n_genes_program']} genes of the set are "
               f"measured here: {', '.join(info['genes_used'][:30])}. Score: mean expression "
               "of these genes minus that of comparable genes (scanpy score_genes).")
    return compare_view.SCORE_KEY


def _changes(joint) -> pd.DataFrame:
    st.subheader("Genes changed in the predicted cells")
    shift = compare_view.mean_shift(joint, CONTROL)
    up, down = compare_view.top_changes(shift, PREDICTED_GROUP)
    shown = [c for c in shift.columns if c.startswith("change ")]
    left, right = st.columns(2)
    with left:
        st.write("Up vs control")
        st.dataframe(up[shown], key="c2s_pt_up")
    with right:
        st.write("Down vs control")
        st.dataframe(down[shown], key="c2s_pt_down")
    st.caption("Change = mean C2S-normalised expression in the group minus in the controls.")
    return shift


def _results(dataset: state.LoadedDataset) -> None:
    tables = saved_results.current_result(st.session_state, RESULT_KEY, TASK_KEY,
                                          (PREDICTED, JOINT))
    if tables is None:
        return
    predicted, joint = tables[PREDICTED], tables[JOINT]
    prov = predicted.uns["c2s"][TASK_KEY]
    params = prov.get("params", {})
    st.divider()
    st.caption(f"Last run: {params.get('perturbation', '?')} on {params.get('n_cells', '?')} "
               f"cells, {prov['model']} ({prov['precision']}, {prov['device']}), {prov['time']}.")
    if not prov.get("card_lists_task", True):
        st.warning("This model's card does not list perturbation response: treat the "
                   "predictions with caution.")
    _metrics(predicted)
    shift = _changes(joint)
    score = _program(joint)
    st.subheader("Map of control, real and predicted cells")
    options = [compare_view.GROUP_KEY, *([score] if score else []), GENE]
    left, right = st.columns([2, 1])
    color = left.selectbox("Colour cells by", options, key="c2s_pt_color",
                           format_func=lambda o: {compare_view.GROUP_KEY: "group",
                                                  compare_view.SCORE_KEY: "program score"}
                           .get(o, o))
    if color == GENE:
        color = right.selectbox("Gene", list(joint.var_names), key="c2s_pt_gene")
    try:
        st.plotly_chart(plots.embedding_figure(joint, color), key="c2s_pt_umap")
    except C2SError as err:
        st.error(str(err))
    st.caption("One UMAP computed on all the cells shown, so the groups share the map.")
    st.subheader("Downloads")
    stem = re.sub(r"\.h5ad$", "", state.safe_filename(dataset.name)) or "dataset"
    left, right = st.columns(2)
    with left:
        components.download_h5ad(predicted, f"{stem}_predicted_perturbed.h5ad",
                                 key="c2s_pt_dl_h5ad",
                                 label="Predicted cells (.h5ad, with provenance)")
    with right:
        components.download_csv(shift, f"{stem}_mean_changes.csv", key="c2s_pt_dl_csv",
                                label="Mean expression and changes per gene (CSV)")


def main() -> None:
    job_page(TASK, "perturbation response prediction", JOB_KEY, MESSAGE_KEY, _apply, _settings, _results)


main()
