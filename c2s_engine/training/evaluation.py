"""Score a trained model on held-out cells: annotation, generation, perturbation, baselines.

These functions are what ``c2s evaluate`` runs, kept apart from argument parsing so the web app
and benchmarks call the same code. Each takes the prepared data (:func:`c2s_engine.pp.prepare`)
and a boolean mask ``scored`` of the cells to score (the held-out cells of a training run,
:func:`held_out_mask`); cells outside the mask are the ones the model (or a baseline) may
learn from.

Baselines (:func:`annotation_baselines`) are the reference points a language model's
annotation must be compared with: CellTypist's logistic regression and kNN on PCA, both fitted
on the unscored cells only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from c2s_engine.errors import C2SError


def held_out_mask(adata, data_path: str | Path, training, cells: str) -> tuple[np.ndarray, str]:
    """Which cells to score, and how they were chosen (``'held-out'`` or ``'all'``).

    Parameters
    ----------
    adata
        The data file's cells.
    data_path
        The file they were read from; its stem names the dataset in the run record.
    training
        The model's training :class:`~c2s_engine.training.records.RunRecord`, or None.
    cells
        ``'held-out'`` (the recorded held-out cells, required), ``'all'``, or ``'auto'``
        (held-out when recorded, else every cell).

    Raises
    ------
    C2SError
        ``cells='held-out'`` but the record names no held-out cells of this file, or none of
        the recorded cells are in it.
    """
    if cells == "all":
        return np.ones(adata.n_obs, dtype=bool), "all"
    test_cells = (training.split.get("test_cells", {}) if training is not None else {})
    name = Path(data_path).stem
    if name not in test_cells:
        if cells == "held-out":
            raise C2SError(
                f"the model's run record names no held-out cells of {Path(data_path).name} "
                f"(recorded datasets: {sorted(test_cells) or 'none'})",
                "evaluate on the file the model was trained with, or pass --cells all")
        print(f"note: no held-out split of {Path(data_path).name} is recorded with the model; "
              "scoring every cell")
        return np.ones(adata.n_obs, dtype=bool), "all"
    mask = adata.obs_names.isin(test_cells[name])
    if not mask.any():
        raise C2SError(f"none of the {len(test_cells[name])} held-out cells recorded for {name} "
                       "are in this file", "pass the same file the model was trained on")
    return np.asarray(mask), "held-out"


def evaluate_annotation(adata, scored: np.ndarray, model, label_key: str, batch_size: int,
                        *, free_text: bool = False, tie_orders: int = 1) -> dict[str, Any]:
    """Accuracy and macro-F1 of scored annotation on the ``scored`` cells.

    The candidates are every label of the file, so a class absent from the scored cells can
    still be (wrongly) predicted.

    Parameters
    ----------
    free_text
        Also generate a free-text answer per cell and report its accuracy (exact match after
        the label normalisation of :func:`~c2s_engine.tasks.annotate.annotate`) as
        ``free_text_accuracy``.
    tie_orders
        Orders of equally expressed genes each cell is scored in, probabilities averaged
        (:func:`~c2s_engine.tasks.annotate.annotate`).

    Returns
    -------
    dict
        ``label_key``, ``n_candidates`` and the label metrics (``accuracy``, ``macro_f1``,
        ``confusion``, ``labels``, ``n_cells``, ...), ``predicted`` (``{cell: label}``, for
        paired comparisons), plus ``free_text_accuracy``.
    """
    from c2s_engine.tasks.annotate import annotate

    labels = adata.obs[label_key].dropna().astype(str)
    candidates = sorted(set(labels))
    subset = adata[scored].copy()
    result = annotate(subset, model, labels=candidates, truth=label_key,
                      mode="both" if free_text else "score", batch_size=batch_size,
                      tie_orders=tie_orders)
    metrics = {"label_key": label_key, "n_candidates": len(candidates), "tie_orders": tie_orders,
               **result.metrics.to_dict(),
               "predicted": {str(k): str(v) for k, v in result.cell_type.items()}}
    if free_text:
        from c2s_engine.tasks.label_metrics import classification_metrics

        found = classification_metrics(subset.obs[label_key].astype(str).tolist(),
                                       result.generated.tolist())
        metrics["free_text_accuracy"] = float(found.accuracy)
    return metrics


def log_normalized(adata) -> np.ndarray:
    """Dense log-normalised expression (the C2S-convention matrix of prepared data).

    The C2S convention is ``log10(1 + counts / total * 1e4)``; CellTypist's is the natural
    log of the same. The two differ by a constant factor, which the per-gene scaling of the
    baselines removes, so the baselines see exactly what CellTypist would.
    """
    from c2s_engine.metrics import cell_matrix

    values = cell_matrix(adata)
    return np.asarray(values.toarray() if hasattr(values, "toarray") else values,
                      dtype=np.float64)


def annotation_baselines(adata, scored: np.ndarray, label_key: str, *, n_pcs: int = 50,
                         n_neighbors: int = 15, seed: int = 0,
                         sentence_top_k: int | None = None) -> dict[str, Any]:
    """Accuracy and macro-F1 of classical annotators fitted on the unscored cells.

    * ``logistic_regression``: CellTypist's method. Genes are scaled to zero mean and unit
      variance on the training cells (values clipped at 10), then a one-vs-rest
      ``LogisticRegression`` (C=1, ``max_iter=1000``) is fitted; held-out cells are scaled
      with the training means and deviations.
    * ``knn_pca``: the same scaled expression, PCA (``n_pcs``) fitted on the training cells,
      and a ``n_neighbors``-nearest-neighbour majority vote in that space.
    * ``logistic_regression_on_sentences`` (with ``sentence_top_k``): the same scaling and
      logistic regression on what a C2S model sees, each cell's top-K sentence: gene ``g`` at
      rank ``r`` (0 = highest) is the feature ``1 / log2(r + 2)``, genes outside the sentence
      are 0. It measures how much of the label the sentences carry.

    Returns
    -------
    dict
        ``{name: {accuracy, macro_f1, n_train, n_test, method, predicted}}`` for each
        baseline; ``predicted`` is ``{cell: label}`` over the scored, labelled cells.

    Raises
    ------
    C2SError
        No cell is left to train on (every cell is scored).
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    labelled = adata.obs[label_key].notna().to_numpy()
    train, test = labelled & ~scored, labelled & scored
    if not train.any():
        raise C2SError("every cell is scored, so no cell is left to fit the baselines on",
                       "evaluate on held-out cells (a model trained with a split)")
    values = log_normalized(adata)
    labels = adata.obs[label_key].astype(str).to_numpy()

    def scaled(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scaler = StandardScaler().fit(features[train])
        return (np.minimum(scaler.transform(features[train]), 10.0),
                np.minimum(scaler.transform(features[test]), 10.0))

    x_train, x_test = scaled(values)

    def scores(predicted: np.ndarray, method: str) -> dict[str, Any]:
        truth = labels[test]
        return {"accuracy": float(accuracy_score(truth, predicted)),
                "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
                "n_train": int(train.sum()), "n_test": int(test.sum()), "method": method,
                "predicted": dict(zip(adata.obs_names[test].astype(str),
                                      map(str, predicted), strict=True))}

    def logistic_regression() -> OneVsRestClassifier:  # CellTypist's settings
        return OneVsRestClassifier(LogisticRegression(C=1.0, max_iter=1000, random_state=seed))

    logistic = logistic_regression().fit(x_train, labels[train])
    n_pcs = min(n_pcs, x_train.shape[0] - 1, x_train.shape[1])
    pca = PCA(n_components=n_pcs, random_state=seed).fit(x_train)
    knn = KNeighborsClassifier(n_neighbors=min(n_neighbors, int(train.sum())))
    knn.fit(pca.transform(x_train), labels[train])
    result = {
        "logistic_regression": scores(
            logistic.predict(x_test),
            "CellTypist: log-normalised expression scaled on training cells (clipped at 10), "
            "one-vs-rest LogisticRegression(C=1, max_iter=1000)"),
        "knn_pca": scores(
            knn.predict(pca.transform(x_test)),
            f"scaled log-normalised expression, PCA({n_pcs}) fitted on training cells, "
            f"{knn.n_neighbors}-nearest-neighbour vote"),
    }
    if sentence_top_k:
        s_train, s_test = scaled(sentence_features(values, sentence_top_k, seed=seed))
        on_sentences = logistic_regression().fit(s_train, labels[train])
        result["logistic_regression_on_sentences"] = scores(
            on_sentences.predict(s_test),
            f"CellTypist's logistic regression on the top-{sentence_top_k} cell sentence: "
            "1/log2(rank + 2) for each gene in it, 0 for the others, scaled on training cells")
    return result


def paired_with_baselines(adata, label_key: str, annotation: Mapping[str, Any],
                          baselines: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The exact McNemar test of the model's annotation against each baseline, on the cells
    both labelled (:func:`~c2s_engine.tasks.label_metrics.paired_accuracy_test`, the model
    first): with a hundred or so held-out cells, a few cells of accuracy either way are often
    chance, and this says how often.

    ``annotation`` is a result of :func:`evaluate_annotation` and ``baselines`` of
    :func:`annotation_baselines`, on the same scored cells.
    """
    from c2s_engine.tasks.label_metrics import paired_accuracy_test

    truth = adata.obs[label_key]
    tests = {}
    for name, baseline in baselines.items():
        cells = list(baseline["predicted"])
        tests[name] = paired_accuracy_test(truth.loc[cells].astype(object).tolist(),
                                           [annotation["predicted"][c] for c in cells],
                                           [baseline["predicted"][c] for c in cells])
    return tests


def sentence_features(values: Any, top_k: int, *, seed: int = 0) -> np.ndarray:
    """Cells x genes features of the top-``top_k`` cell sentences: ``1 / log2(rank + 2)`` for
    a gene at ``rank`` (0 = highest expression), 0 for genes outside the sentence."""
    from c2s_engine.sentences import rank_genes

    ranks = rank_genes(values, top_k, seed=seed)
    features = np.zeros((ranks.shape[0], values.shape[1]), dtype=np.float32)
    rows, cols = np.nonzero(ranks >= 0)
    features[rows, ranks[rows, cols]] = 1.0 / np.log2(cols + 2.0)
    return features


def _halves(adata, key: str, seed: int):
    """Two random halves of every condition (the real-vs-real reference distance)."""
    rng = np.random.default_rng(seed)
    first = np.zeros(adata.n_obs, dtype=bool)
    for value in adata.obs[key].astype(str).unique():
        members = np.flatnonzero((adata.obs[key].astype(str) == value).to_numpy())
        first[rng.permutation(members)[: members.size // 2]] = True
    return adata[first], adata[~first]


def evaluate_generation(adata, scored: np.ndarray, model, label_key: str, *, n: int | None,
                        seed: int, batch_size: int) -> dict[str, Any]:
    """scFID/MMD of cells generated per cell type against the real ``scored`` cells.

    Cells are generated for every cell type with at least 2 scored cells, ``n`` per type, or
    with ``n=None`` as many as the scored cells of that type (the held-out composition). They
    are reconstructed with the reverse transform of the other cells when there are any, and
    compared per cell type in a PCA fitted on the real scored cells. The same metrics between
    two random halves of the real cells are the floor a perfect generator would reach.

    Returns
    -------
    dict
        ``label_key``, ``cell_types``, ``n_per_type`` (an int, or ``{type: n}`` with
        ``n=None``), ``generated_vs_real`` and ``real_vs_real``
        (:meth:`~c2s_engine.metrics.DistributionComparison.to_dict`).
    """
    import anndata as ad

    from c2s_engine.metrics import compare_distributions
    from c2s_engine.tasks.generate import generate_cells

    real = adata[scored].copy()
    counts = real.obs[label_key].astype(str).value_counts()
    types = sorted(counts[counts >= 2].index)
    if not types:
        raise C2SError("no cell type has 2 or more cells to compare generated cells with",
                       "score more cells (--cells all) or choose another --label-key")
    reference = adata[~scored].copy() if (~scored).any() else adata.copy()
    if n is None:
        per_type: int | dict[str, int] = {t: int(counts[t]) for t in types}
        parts = [generate_cells(reference, model, cell_type=t, n=per_type[t], seed=seed,
                                batch_size=batch_size) for t in types]
        generated = ad.concat(parts, index_unique="-")
    else:
        per_type = n
        generated = generate_cells(reference, model, cell_type=types, n=n, seed=seed,
                                   batch_size=batch_size)
    generated.obs[label_key] = generated.obs["c2s_condition"].astype(str).to_numpy()
    real.obs[label_key] = real.obs[label_key].astype(str)
    comparison = compare_distributions(real, generated, condition_key=label_key)
    half_a, half_b = _halves(real, label_key, seed)
    floor = compare_distributions(half_a, half_b, condition_key=label_key)
    return {"label_key": label_key, "cell_types": types, "n_per_type": per_type,
            "generated_vs_real": comparison.to_dict(), "real_vs_real": floor.to_dict()}


def _shifted_controls(adata, control: np.ndarray, shift: pd.Series):
    """Control cells plus a per-gene mean shift (clipped at 0): the baseline prediction."""
    from anndata import AnnData

    from c2s_engine.metrics import cell_matrix

    values = cell_matrix(adata[control])
    values = values.toarray() if hasattr(values, "toarray") else np.asarray(values)
    shifted = np.maximum(values + shift.reindex(adata.var_names).to_numpy()[None, :], 0.0)
    return AnnData(X=shifted.astype(np.float32), obs=adata.obs.iloc[np.flatnonzero(control)].copy(),
                   var=pd.DataFrame(index=adata.var_names.copy()))


def evaluate_perturbation(adata, scored: np.ndarray, model, *, label_key: str,
                          condition_key: str, control_value: str, names: Mapping[str, str],
                          perturbation: str | None, seed: int, batch_size: int,
                          do_sample: bool = True, temperature: float = 1.0,
                          contrast_weight: float = 0.0) -> dict[str, Any]:
    """MMD, scFID and Pearson r of the predicted response of the held-out perturbed cells.

    For each perturbed condition among the scored cells, the control cells of the same cell
    types are perturbed by the model and compared with the real scored perturbed cells.
    Answers are sampled (``do_sample``, ``temperature``) by default, as generated cells are:
    the metrics compare distributions, and greedy answers collapse each cell type towards its
    most likely sentence, which no population of real cells looks like. The
    baseline adds to the same controls the mean change (perturbed minus control) measured on
    the other, unscored cells. The perturbation is named ``perturbation`` in prompts, or else
    ``names[condition value]`` (the training config's ``perturbation_names``) or the value.
    With ``contrast_weight`` the answers are guided against the same prompts holding control
    cells of the other, unscored cell types (``predict_perturbation(contrast=...)``).
    """
    from c2s_engine.metrics import mean_expression
    from c2s_engine.tasks.perturb import predict_perturbation

    condition = adata.obs[condition_key].astype(str).to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()
    is_control = condition == control_value
    results: dict[str, Any] = {}
    for value in sorted(set(condition[scored & ~is_control])):
        real_mask = scored & (condition == value)
        types = sorted(set(labels[real_mask]))
        control = is_control & np.isin(labels, types)
        if not control.any():
            raise C2SError(f"no control cell ({condition_key} == {control_value!r}) of the "
                           f"cell types {types}", "evaluate on data holding their controls")
        real, controls = adata[real_mask].copy(), adata[control].copy()
        word = perturbation or names.get(value, value)
        others = ~scored & is_control & ~np.isin(labels, types)
        predicted = predict_perturbation(
            controls, word, model, seed=seed, batch_size=batch_size, do_sample=do_sample,
            temperature=temperature, contrast_weight=contrast_weight,
            contrast=adata[others].copy() if contrast_weight else None,
            contrast_key=label_key if contrast_weight else None)
        predicted.obs[label_key] = controls.obs[label_key].astype(str).to_numpy()
        real.obs[label_key] = real.obs[label_key].astype(str)
        train_pert = ~scored & (condition == value) & ~np.isin(labels, types)
        entry: dict[str, Any] = {"perturbation": word, "cell_types": types,
                                 "n_real": int(real_mask.sum()), "n_controls": int(control.sum())}
        entry["model"] = _response_metrics(real, controls, predicted, label_key)
        if train_pert.any() and others.any():
            shift = mean_expression(adata[train_pert]) - mean_expression(adata[others])
            baseline = _shifted_controls(adata, control, shift)
            entry["baseline_mean_shift"] = _response_metrics(real, controls, baseline, label_key)
        results[value] = entry
    if not results:
        raise C2SError(f"no scored cell is perturbed ({condition_key} != {control_value!r})",
                       "evaluate a model whose split held out perturbed cells, or --cells all")
    decoding = f"sampled, temperature {temperature:g}" if do_sample else "greedy"
    if contrast_weight:
        decoding += f", contrast weight {contrast_weight:g} against other {label_key} controls"
    return {"label_key": label_key, "condition_key": condition_key,
            "control_value": control_value, "decoding": decoding, "conditions": results}


def _response_metrics(real, controls, predicted, label_key: str) -> dict[str, Any]:
    from c2s_engine.metrics import compare_distributions, pearson_delta

    comparison = compare_distributions(real, predicted, condition_key=label_key)
    return {**comparison.to_dict(), "pearson_delta": pearson_delta(controls, real, predicted)}
