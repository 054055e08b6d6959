"""Plotly figures of the web app: cells on an embedding or in space, and confusion matrices.

Every point of a cell plot carries its ``obs_name`` as custom data, so a lasso or box selection
made in the browser (``st.plotly_chart(..., on_select="rerun")``) maps back to cells with
:func:`selected_cells`, whatever the colouring split the points into.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from anndata import AnnData

from c2s_engine.embedding_view import color_values
from c2s_engine.errors import SpatialDataError

#: Above this many cells, points are drawn with WebGL so the browser stays responsive.
WEBGL_FROM = 5000
CATEGORICAL_COLORS = px.colors.qualitative.Dark24 + px.colors.qualitative.Light24
CONTINUOUS_SCALE = "Viridis"


def _cells_figure(coords: np.ndarray, adata: AnnData, color: str | None, *,
                  axis_title: str, title: str, equal_axes: bool) -> go.Figure:
    frame = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "cell": adata.obs_names})
    options: dict[str, Any] = {}
    if color:
        values, kind = color_values(adata, color)
        frame[color] = values.to_numpy()
        if kind == "categorical":
            options = {"category_orders": {color: list(values.cat.categories)},
                       "color_discrete_sequence": CATEGORICAL_COLORS}
        else:
            options = {"color_continuous_scale": CONTINUOUS_SCALE}
    figure = px.scatter(
        frame, x="x", y="y", color=color or None, custom_data=["cell"],
        hover_name="cell", hover_data={"x": False, "y": False, "cell": False},
        render_mode="webgl" if adata.n_obs >= WEBGL_FROM else "svg", title=title, **options,
    )
    figure.update_traces(marker={"size": 5 if adata.n_obs < 2000 else 3, "opacity": 0.85})
    figure.update_layout(
        dragmode="lasso", legend={"itemsizing": "constant", "title": {"text": color or ""}},
        xaxis={"title": f"{axis_title} 1", "showticklabels": False, "showgrid": False,
               "zeroline": False},
        yaxis={"title": f"{axis_title} 2", "showticklabels": False, "showgrid": False,
               "zeroline": False},
        margin={"l": 10, "r": 10, "t": 40, "b": 10}, plot_bgcolor="white",
    )
    if equal_axes:
        figure.update_yaxes(scaleanchor="x", scaleratio=1)
    return figure


def embedding_figure(adata: AnnData, color: str | None = None, *, basis: str = "X_umap",
                     title: str = "") -> go.Figure:
    """Cells on a 2-D embedding, coloured by an obs column or a gene.

    Parameters
    ----------
    adata
        Data with ``obsm[basis]``.
    color
        obs column (categorical: one colour per value; numeric, e.g. a confidence: a colour
        scale) or gene symbol (C2S-normalised expression); None for no colouring.
    basis
        obsm key of the embedding (first two columns are drawn).
    title
        Figure title.

    Raises
    ------
    ObsColumnError
        ``color`` is neither an obs column nor a gene.
    """
    axis = basis.removeprefix("X_").upper()
    return _cells_figure(np.asarray(adata.obsm[basis])[:, :2], adata, color, axis_title=axis,
                         title=title, equal_axes=False)


def spatial_figure(adata: AnnData, color: str | None = None, *, spatial_key: str = "spatial",
                   radius: float | None = None, center: str | None = None,
                   title: str = "") -> go.Figure:
    """Cells at their spatial coordinates (equal axis scales), optionally with a radius circle.

    Parameters
    ----------
    radius, center
        Draw a circle of this radius (in the coordinates' units) around cell ``center``
        (the first cell when None), to show what a neighbourhood radius covers.

    Raises
    ------
    SpatialDataError
        ``obsm[spatial_key]`` is missing.
    """
    if spatial_key not in adata.obsm:
        raise SpatialDataError(
            f"the data has no spatial coordinates in obsm[{spatial_key!r}]",
            "store the x/y position of every cell as an (n_cells, 2) array in "
            "adata.obsm['spatial'] and load the file again")
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, :2]
    figure = _cells_figure(coords, adata, color, axis_title="spatial", title=title,
                           equal_axes=True)
    figure.update_xaxes(showticklabels=True)
    figure.update_yaxes(showticklabels=True)
    if radius is not None and radius > 0:
        position = 0 if center is None else adata.obs_names.get_loc(center)
        x, y = coords[position]
        figure.add_shape(type="circle", x0=x - radius, x1=x + radius, y0=y - radius,
                         y1=y + radius, line={"color": "#DC2626", "width": 2})
        figure.add_annotation(x=x, y=y + radius, text=f"radius {radius:g}", showarrow=False,
                              yshift=10, font={"color": "#DC2626"})
    return figure


def confusion_figure(confusion: np.ndarray, labels: Sequence[str], n_true_labels: int, *,
                     title: str = "True vs predicted cell types") -> go.Figure:
    """Heatmap of a confusion matrix: rows are true labels, columns predicted ones.

    Only the ``n_true_labels`` rows of true classes are drawn (the other rows, labels only the
    model used, are empty by construction); cells show counts, colours the row fraction.
    """
    counts = np.asarray(confusion, dtype=np.int64)[:n_true_labels]
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    figure = go.Figure(go.Heatmap(
        z=fractions, x=list(labels), y=list(labels[:n_true_labels]), text=counts,
        texttemplate="%{text}", colorscale="Teal", zmin=0, zmax=1,
        colorbar={"title": {"text": "share of row"}},
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text} cells<extra></extra>"))
    figure.update_layout(title=title, xaxis={"title": "predicted", "tickangle": -40},
                         yaxis={"title": "true", "autorange": "reversed"},
                         margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return figure


def selected_cells(event: Mapping[str, Any] | Any) -> list[str]:
    """obs names of the points picked in a cell plot (from ``st.plotly_chart``'s event).

    Accepts the event returned by ``st.plotly_chart(..., on_select="rerun")`` or its
    ``selection`` mapping; the order is the order of the points, duplicates removed.
    """
    selection = event.get("selection", event) if isinstance(event, Mapping) else \
        getattr(event, "selection", {})
    names: list[str] = []
    for point in selection.get("points", []) or []:
        data = point.get("customdata")
        if isinstance(data, list | tuple):
            data = data[0] if data else None
        if data is not None:
            names.append(str(data))
    return list(dict.fromkeys(names))
