"""Read single-cell expression files into AnnData, with typed errors for bad inputs.

Supported: ``.h5ad`` (opened backed when large), 10x ``.h5``, a 10x ``matrix.mtx(.gz)`` folder
(or a ``.zip`` of one), ``.loom``, and ``.csv``/``.tsv`` text tables (optionally ``.gz``).
No reader unpickles anything.

Orientation of text tables (``genes_in_rows=None``): the row labels and the column labels are
each scored, and the first rule that separates them decides:

1. Ensembl gene IDs (``ENSG00000141510``): the side where at least half the labels are IDs
   (and not on the other side) holds genes.
2. Cell labels: 10x/Drop-seq barcodes (a run of 10+ ``ACGTN``, e.g. ``AAACCTGAGAAACCAT-1``),
   numbers, or names like ``cell_12``: the side where at least half are cell labels holds cells.
3. Gene symbols (a letter then up to 19 letters, digits, ``.`` or ``-``): the side where at
   least 80% look like symbols, when under half of the other side does, holds genes.
4. Otherwise cells are assumed to be in rows (the AnnData convention); pass
   ``genes_in_rows=True`` when that is wrong.
"""

from __future__ import annotations

import gzip
import re
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

from c2s_engine.errors import (
    CorruptFileError,
    EmptyDataError,
    EncodingError,
    MissingFileError,
    NonNumericDataError,
    UnsupportedFormatError,
)

SUPPORTED_FORMATS = (
    ".h5ad",
    ".h5 (10x)",
    "10x matrix.mtx(.gz) folder",
    ".zip of a 10x folder",
    ".loom",
    ".csv",
    ".tsv",
    ".csv.gz",
    ".tsv.gz",
)
_R_FORMATS = (".rds", ".rda", ".rdata", ".robj")
_EXCEL_FORMATS = (".xlsx", ".xls")
# A zip is refused when it would unpack to more than this, or when a member over 10 MiB
# inflates more than _ZIP_MAX_RATIO times (real matrices compress far less; zip bombs more).
ZIP_MAX_TOTAL_BYTES = 20 * 1024**3
ZIP_MAX_RATIO = 100
_ZIP_RATIO_MIN_SIZE = 10 * 1024**2
# Values held per pandas chunk of a text table (bounds memory whatever the table's width).
_TEXT_CHUNK_VALUES = 4_000_000

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_BARCODE_RE = r"[ACGTN]{10,}"
_CELL_NAME_RE = r"^(?:cell|sample|bc|barcode|spot)[\W_]*\d+$|^\d+$"
_SYMBOL_RE = r"^[A-Za-z][A-Za-z0-9.\-]{0,19}$"
_ENSEMBL_RE = r"^ENS[A-Z]*G\d{11}(\.\d+)?$"


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "10x_mtx"
    for suffix, fmt in (
        (".h5ad", "h5ad"),
        (".h5", "10x_h5"),
        (".loom", "loom"),
        (".zip", "zip"),
        (".mtx", "10x_mtx"),
        (".mtx.gz", "10x_mtx"),
        (".csv", "csv"),
        (".csv.gz", "csv"),
        (".tsv", "tsv"),
        (".tsv.gz", "tsv"),
    ):
        if name.endswith(suffix):
            return fmt
    supported = ", ".join(SUPPORTED_FORMATS)
    if name.endswith(_R_FORMATS):
        raise UnsupportedFormatError(
            f"{path.name} is an R object file, which cannot be read safely outside R",
            fix="convert it to .h5ad in R (e.g. SeuratDisk::SaveH5Seurat + Convert, or "
            "zellkonverter::writeH5AD for SingleCellExperiment) and load the .h5ad",
        )
    if name.endswith(_EXCEL_FORMATS):
        raise UnsupportedFormatError(
            f"{path.name} is an Excel workbook",
            fix="save the sheet as CSV (File > Save As > CSV UTF-8) with cells or genes in rows "
            "and load the .csv",
        )
    raise UnsupportedFormatError(
        f"{path.name} has an unsupported extension",
        fix=f"provide one of: {supported}",
    )


def _sniff(path: Path) -> str:
    """What the first bytes say the file is: 'hdf5', 'gzip', 'zip', 'text' or 'binary'."""
    with path.open("rb") as fh:
        head = fh.read(512)
    if head.startswith(_HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "text"


def _corrupt(path: Path, kind: str, err: BaseException) -> CorruptFileError:
    actual = _sniff(path) if path.is_file() else "folder"
    expected = {"h5ad": "hdf5", "10x_h5": "hdf5", "loom": "hdf5", "zip": "zip"}.get(kind)
    if expected and actual != expected:
        reason = f"its content is {actual}, not {expected}"
        fix = "check that the file has the right extension (a CSV renamed .h5ad is still a CSV)"
    else:
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        fix = "the file is probably truncated or damaged; download or export it again"
    return CorruptFileError(f"cannot read {path.name} as {kind} ({reason})", fix=fix)


def _first_bad_utf8_line(path: Path) -> tuple[int, bytes]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, line[max(0, err.start - 10) : err.end + 10]
    return 0, b""


def _encoding_error(path: Path) -> EncodingError:
    line, snippet = _first_bad_utf8_line(path)
    where = f"line {line}" if line else "a name"
    return EncodingError(
        f"{path.name} {where} is not valid UTF-8 (near {snippet!r}); it is probably latin-1 "
        "or another legacy encoding",
        fix="re-save the file as UTF-8 (e.g. Excel: Save As > CSV UTF-8; or "
        f"iconv -f latin1 -t utf-8 {path.name})",
    )


def _check_utf8(path: Path) -> None:
    line, _ = _first_bad_utf8_line(path)
    if line:
        raise _encoding_error(path)


def _label_shape(labels) -> dict[str, float]:
    labels = pd.Series(np.asarray(labels, dtype=object)[:2000]).astype(str).str.strip()
    barcode = labels.str.contains(_BARCODE_RE, regex=True)
    cell = barcode | labels.str.match(_CELL_NAME_RE, case=False)
    if labels.empty:
        return {"ensembl": 0.0, "cell": 0.0, "symbol": 0.0}
    return {
        "ensembl": float(labels.str.match(_ENSEMBL_RE).mean()),
        "cell": float(cell.mean()),
        "symbol": float((labels.str.match(_SYMBOL_RE) & ~cell).mean()),
    }


def detect_orientation(row_labels, column_labels) -> tuple[bool, str]:
    """Decide whether a text table has genes in rows, from label shapes (see module docstring).

    Returns
    -------
    genes_in_rows, rule
        The decision and the rule that made it, in words.
    """
    rows, cols = _label_shape(row_labels), _label_shape(column_labels)
    if rows["ensembl"] >= 0.5 > cols["ensembl"]:
        return True, "row labels look like Ensembl gene IDs"
    if cols["ensembl"] >= 0.5 > rows["ensembl"]:
        return False, "column labels look like Ensembl gene IDs"
    if cols["cell"] >= 0.5 > rows["cell"]:
        return True, "column labels look like cell barcodes/names"
    if rows["cell"] >= 0.5 > cols["cell"]:
        return False, "row labels look like cell barcodes/names"
    if rows["symbol"] >= 0.8 and cols["symbol"] < 0.5:
        return True, "row labels look like gene symbols"
    if cols["symbol"] >= 0.8 and rows["symbol"] < 0.5:
        return False, "column labels look like gene symbols"
    return False, "labels are ambiguous; assumed cells in rows (pass genes_in_rows=True if not)"


def _numeric_block(chunk: pd.DataFrame, path: Path) -> np.ndarray:
    try:
        return chunk.to_numpy(dtype=np.float32)
    except (ValueError, TypeError):
        pass
    for column in chunk.columns:
        values = chunk[column]
        coerced = pd.to_numeric(values, errors="coerce")
        bad = coerced.isna() & values.notna()
        if bad.any():
            row = bad.idxmax()
            raise NonNumericDataError(
                f"{path.name}: value {values[row]!r} in row '{row}', column '{column}' is not "
                f"a number ({int(bad.sum())} non-numeric value(s) in that column of this block)",
                fix="keep only the expression matrix: gene/cell names in the first column and "
                "the header row, numbers everywhere else (move annotations to a separate file)",
            )
    raise NonNumericDataError(  # pragma: no cover - to_numpy failed but every value converts
        f"{path.name}: the table holds values that are not numbers",
        fix="keep only numbers besides the first column and the header row",
    )


def _read_text_table(path: Path, fmt: str, genes_in_rows: bool | None) -> tuple[AnnData, str, str]:
    sep = "," if fmt == "csv" else "\t"
    try:
        header = pd.read_csv(path, sep=sep, index_col=0, nrows=0, encoding="utf-8")
        chunk_rows = max(1, _TEXT_CHUNK_VALUES // max(1, header.shape[1]))
        blocks, row_labels = [], []
        for chunk in pd.read_csv(
            path, sep=sep, index_col=0, chunksize=chunk_rows, encoding="utf-8"
        ):
            blocks.append(sp.csr_matrix(_numeric_block(chunk, path)))
            row_labels.extend(chunk.index.astype(str))
    except UnicodeDecodeError:
        raise _encoding_error(path) from None
    except pd.errors.EmptyDataError:
        raise EmptyDataError(
            f"{path.name} is empty", fix="export the expression matrix again"
        ) from None
    except (pd.errors.ParserError, OSError, EOFError, ValueError) as err:
        raise _corrupt(path, fmt, err) from None
    columns = [str(c) for c in header.columns]
    if not blocks or not columns:
        raise EmptyDataError(
            f"{path.name} has {len(row_labels)} data row(s) and {len(columns)} data column(s)",
            fix="the table needs a header row of names and at least one row of values",
        )
    matrix = sp.vstack(blocks, format="csr")
    if genes_in_rows is None:
        genes_in_rows, rule = detect_orientation(row_labels, columns)
    else:
        rule = "given by genes_in_rows"
    if genes_in_rows:
        adata = AnnData(
            matrix.T.tocsr(), obs=pd.DataFrame(index=columns), var=pd.DataFrame(index=row_labels)
        )
    else:
        adata = AnnData(matrix, obs=pd.DataFrame(index=row_labels), var=pd.DataFrame(index=columns))
    return adata, "genes_in_rows" if genes_in_rows else "cells_in_rows", rule


def _mtx_folder_files(folder: Path) -> None:
    if (folder / "genes.tsv").is_file():
        needed = ["matrix.mtx", "genes.tsv", "barcodes.tsv"]
    else:
        needed = ["matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise CorruptFileError(
            f"10x folder {folder.name} lacks {', '.join(missing)}",
            fix="provide the CellRanger output folder as is: matrix.mtx.gz, features.tsv.gz and "
            "barcodes.tsv.gz (v3), or matrix.mtx, genes.tsv and barcodes.tsv (v2)",
        )
    for name in needed[1:]:
        _check_utf8(folder / name)


def _read_10x_mtx(folder: Path) -> AnnData:
    _mtx_folder_files(folder)
    try:
        # Ensembl IDs are unique; genes.use_gene_symbols swaps in var['gene_symbols'] later.
        return sc.read_10x_mtx(folder, var_names="gene_ids")
    except (OSError, EOFError, ValueError, IndexError, KeyError, pd.errors.ParserError) as err:
        raise _corrupt(folder, "10x_mtx", err) from None


def _safe_members(archive: zipfile.ZipFile, path: Path) -> list[zipfile.ZipInfo]:
    members = [m for m in archive.infolist() if not m.filename.startswith("__MACOSX/")]
    total = 0
    for member in members:
        name = PurePosixPath(member.filename.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or re.match(r"^[A-Za-z]:", member.filename):
            raise CorruptFileError(
                f"{path.name} contains an unsafe member path {member.filename!r} "
                "(absolute or with '..')",
                fix="re-create the zip from inside the 10x folder with relative paths",
            )
        total += member.file_size
        ratio = member.file_size / max(1, member.compress_size)
        if member.file_size > _ZIP_RATIO_MIN_SIZE and ratio > ZIP_MAX_RATIO:
            raise CorruptFileError(
                f"{path.name}: member {member.filename!r} would inflate {ratio:.0f}-fold "
                f"to {member.file_size} bytes, which is not a plausible expression matrix",
                fix="zip the CellRanger folder again, or provide the folder itself",
            )
    if total > ZIP_MAX_TOTAL_BYTES:
        raise CorruptFileError(
            f"{path.name} would unpack to {total / 1024**3:.1f} GiB "
            f"(limit {ZIP_MAX_TOTAL_BYTES / 1024**3:.0f} GiB)",
            fix="provide the unpacked 10x folder or an .h5ad instead",
        )
    return members


def _read_zip(path: Path) -> AnnData:
    try:
        with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as tmp:
            for member in _safe_members(archive, path):
                archive.extract(member, tmp)
            matrices = sorted(
                p
                for p in Path(tmp).rglob("matrix.mtx*")
                if p.name in ("matrix.mtx", "matrix.mtx.gz")
            )
            if len(matrices) != 1:
                found = "no" if not matrices else f"{len(matrices)}"
                raise UnsupportedFormatError(
                    f"{path.name} holds {found} 10x matrix.mtx(.gz) file(s); exactly one "
                    "10x folder is expected",
                    fix="zip a single CellRanger folder (matrix.mtx.gz, features.tsv.gz, "
                    "barcodes.tsv.gz), or load the file inside directly",
                )
            return _read_10x_mtx(matrices[0].parent)
    except zipfile.BadZipFile as err:
        raise _corrupt(path, "zip", err) from None


def _read_10x_h5(path: Path) -> AnnData:
    try:
        with h5py.File(path, "r") as f:
            is_anndata = "obs" in f and "var" in f and "X" in f
        if is_anndata:
            return ad.read_h5ad(path)
        adata = sc.read_10x_h5(path)
    except UnicodeDecodeError:
        raise _encoding_error(path) from None
    except Exception as err:  # scanpy raises a bare Exception for missing datasets
        raise _corrupt(path, "10x_h5", err) from None
    # Same layout as the mtx reader: unique IDs as var_names, symbols in a column.
    adata.var["gene_symbols"] = adata.var_names.astype(str).to_numpy()
    adata.var_names = adata.var.pop("gene_ids").astype(str).to_numpy()
    return adata


def _read_loom(path: Path) -> AnnData:
    try:
        with h5py.File(path, "r") as f:
            col_attrs = set(f["col_attrs"].keys())
            row_attrs = set(f["row_attrs"].keys())
        obsm = {}
        for x, y in (("X", "Y"), ("x", "y")):
            if {x, y} <= col_attrs:
                obsm["spatial"] = [x, y]
                break
        var_names = next((n for n in ("Gene", "gene", "Accession") if n in row_attrs), "Gene")
        obs_names = next(
            (n for n in ("CellID", "cell_id", "obs_names") if n in col_attrs), "CellID"
        )
        adata = ad.io.read_loom(
            path, sparse=True, obsm_mapping=obsm, var_names=var_names, obs_names=obs_names
        )
    except UnicodeDecodeError:
        raise _encoding_error(path) from None
    except (OSError, KeyError, ValueError) as err:
        raise _corrupt(path, "loom", err) from None
    if "spatial" in adata.obsm:
        adata.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    return adata


def _read_h5ad(path: Path, backed: bool) -> AnnData:
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except UnicodeDecodeError:
        raise _encoding_error(path) from None
    except Exception as err:  # h5py/anndata raise OSError, KeyError or AnnDataReadError
        raise _corrupt(path, "h5ad", err) from None


def _check_not_empty(adata: AnnData, path: Path) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise EmptyDataError(
            f"{path.name} has {adata.n_obs} cells and {adata.n_vars} genes",
            fix="provide a matrix with at least one cell and one gene (check the export step)",
        )
    if not adata.isbacked:
        X = adata.X
        nnz = X.count_nonzero() if sp.issparse(X) else int(np.count_nonzero(X))
        if nnz == 0:
            raise EmptyDataError(
                f"{path.name}: every value of the {adata.n_obs} x {adata.n_vars} matrix is zero",
                fix="check that the expression values were exported (not only the names)",
            )


def read(
    path: str | Path,
    *,
    backed: bool | None = None,
    genes_in_rows: bool | None = None,
    max_in_memory_bytes: int = 2 * 1024**3,
) -> AnnData:
    """Read an expression file into AnnData (cells x genes).

    Parameters
    ----------
    path
        ``.h5ad``, 10x ``.h5``, a 10x folder (or its ``matrix.mtx(.gz)``), a ``.zip`` of a 10x
        folder, ``.loom``, ``.csv``/``.tsv`` (optionally ``.gz``).
    backed
        Open an ``.h5ad`` backed (``backed='r'``: X stays on disk). ``None``: backed when the file
        is larger than ``max_in_memory_bytes``.
    genes_in_rows
        Orientation of a text table; ``None`` detects it from the labels (module docstring).
    max_in_memory_bytes
        Size above which ``.h5ad`` files are opened backed.

    Returns
    -------
    AnnData
        10x data keep the unique gene IDs as var_names and symbols in ``var['gene_symbols']``;
        a loom's ``X``/``Y`` cell attributes become ``obsm['spatial']``.

    Writes
    ------
    ``adata.uns['c2s']['source']``
        ``{path, format, orientation, orientation_rule, backed}``; orientation is
        ``'cells_in_rows'`` or ``'genes_in_rows'`` as stored in the file; orientation_rule says
        why for text tables ('' otherwise).

    Raises
    ------
    MissingFileError, UnsupportedFormatError, CorruptFileError, EncodingError, EmptyDataError,
    NonNumericDataError
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingFileError(
            f"{path} does not exist", fix="check the path (and the working directory)"
        )
    fmt = _format_of(path)
    if fmt == "10x_mtx" and path.is_file():
        path = path.parent
    if backed and fmt != "h5ad":
        raise UnsupportedFormatError(
            f"backed reading is only available for .h5ad, not {path.name}",
            fix="convert the file to .h5ad (adata.write_h5ad) or read it without backed=True",
        )
    is_backed = fmt == "h5ad" and (
        backed if backed is not None else path.stat().st_size > max_in_memory_bytes
    )
    orientation, rule = "genes_in_rows", ""
    if fmt == "h5ad":
        adata, orientation = _read_h5ad(path, is_backed), "cells_in_rows"
    elif fmt == "10x_h5":
        adata = _read_10x_h5(path)
    elif fmt == "10x_mtx":
        adata = _read_10x_mtx(path)
    elif fmt == "zip":
        adata = _read_zip(path)
    elif fmt == "loom":
        adata = _read_loom(path)
    else:
        adata, orientation, rule = _read_text_table(path, fmt, genes_in_rows)
    _check_not_empty(adata, path)
    adata.uns.setdefault("c2s", {})["source"] = {
        "path": str(path.resolve()),
        "format": fmt,
        "orientation": orientation,
        "orientation_rule": rule,
        "backed": bool(is_backed),
    }
    return adata
