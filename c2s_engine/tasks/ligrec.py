"""Ligand-receptor context for the spatial prompts, from a table the user supplies.

The C2S-Scale paper (section 2.5) gave the model CellPhoneDB and BioGRID interactions as
text. Here, the interactions of the table whose ligand and receptor genes are all expressed
in the cells of a prompt (they appear in those cells' sentences) are written as lines
``"<ligand> - <receptor>"`` in a block put before the prompt. Complexes are written with
``_`` between subunits (``TGFBR1_TGFBR2``, as CellChatDB and CellPhoneDB do) and count as
expressed when every subunit is. Genes are matched case-insensitively, so a human table
(``TGFB1``) also serves mouse data (``Tgfb1``); the lines use the data's own spelling.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from c2s_engine.errors import InteractionTableError

HEADER = "Ligand-receptor interactions between expressed genes (ligand - receptor):"

#: (ligand subunits, receptor subunits), spelled as in the data.
Interaction = tuple[tuple[str, ...], tuple[str, ...]]
TableLike = str | Path | pd.DataFrame


def load_ligrec(table: TableLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A ligand-receptor table as a DataFrame with text columns ``ligand`` and ``receptor``.

    Rows missing either gene are dropped.

    Parameters
    ----------
    table
        A CSV/TSV path (``.tsv``/``.txt`` are read tab-separated) or a DataFrame.
    columns
        The (ligand, receptor) column names; by default the columns named ``ligand`` and
        ``receptor`` (any case).

    Raises
    ------
    InteractionTableError
        Missing or unreadable file, or the ligand/receptor columns are not found.
    """
    if isinstance(table, pd.DataFrame):
        frame, source = table, "the ligand-receptor table"
    else:
        path = Path(table)
        source = f"ligand-receptor table {path}"
        if not path.is_file():
            raise InteractionTableError(
                f"{source} does not exist",
                "pass the path of a CSV file with ligand and receptor columns")
        sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
        try:
            frame = pd.read_csv(path, sep=sep, dtype=str)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            problem = " ".join(str(exc).split())
            raise InteractionTableError(f"{source} cannot be read as a table ({problem})",
                                        "save it as a comma-separated CSV with a header row"
                                        ) from exc
    by_name = {str(c).strip().casefold(): c for c in frame.columns}
    if columns is None:
        asked = ("ligand", "receptor")
    elif len(columns) != 2:
        raise InteractionTableError(f"columns must name two columns, got {list(columns)}",
                                    "pass columns=(ligand_column, receptor_column)")
    else:
        asked = tuple(str(c) for c in columns)
    wanted = [by_name.get(name.strip().casefold()) for name in asked]
    if any(c is None for c in wanted):
        found = ", ".join(repr(str(c)) for c in frame.columns) or "none"
        raise InteractionTableError(
            f"{source} has no {' and '.join(repr(a) for a in asked)} columns (it has: {found})",
            "rename the two gene columns to ligand and receptor, or name them with "
            "ligrec_columns=(ligand, receptor) (CLI: --ligrec-columns LIGAND,RECEPTOR)")
    out = frame[wanted].astype("string")
    out.columns = ["ligand", "receptor"]
    out = out.apply(lambda column: column.str.strip()).replace("", pd.NA).dropna()
    return out.astype(str).reset_index(drop=True)


def matching_interactions(table: pd.DataFrame, genes: Iterable[str],
                          limit: int | None = None) -> list[Interaction]:
    """Interactions of ``table`` whose genes (every complex subunit) are all in ``genes``.

    Matching ignores case; the result uses the spelling of ``genes``, in table order,
    without repeats, at most ``limit`` of them.
    """
    spelling = {g.casefold(): g for g in genes}
    found: dict[Interaction, None] = {}
    for ligand, receptor in zip(table["ligand"], table["receptor"], strict=True):
        sides = [side.split("_") for side in (ligand, receptor)]
        if all(g.casefold() in spelling for side in sides for g in side):
            lig, rec = (tuple(spelling[g.casefold()] for g in side) for side in sides)
            found[(lig, rec)] = None
            if limit is not None and len(found) >= limit:
                break
    return list(found)


def interaction_block(interactions: Sequence[Interaction]) -> str:
    """The text put before a prompt ('' when there is no interaction)."""
    if not interactions:
        return ""
    lines = [f"{'_'.join(lig)} - {'_'.join(rec)}" for lig, rec in interactions]
    return HEADER + "\n" + "\n".join(lines) + "\n\n"


def genes_of(sentences: Iterable[str]) -> set[str]:
    """Every gene named in ``sentences``."""
    return {g for s in sentences for g in s.split()}


class LigrecContext:
    """The optional ligand-receptor table of one task call.

    Parameters
    ----------
    ligrec
        Path or DataFrame (see :func:`load_ligrec`), or None for no context.
    columns
        Its (ligand, receptor) column names.
    limit
        Most interactions written before one prompt.
    """

    def __init__(self, ligrec: TableLike | None, columns: Sequence[str] | None,
                 limit: int) -> None:
        self.table = None if ligrec is None else load_ligrec(ligrec, columns)
        self.limit = int(limit)

    def interactions(self, sentences: Iterable[str]) -> list[Interaction]:
        """Interactions expressed in the cells of ``sentences`` ([] without a table)."""
        if self.table is None:
            return []
        return matching_interactions(self.table, genes_of(sentences), self.limit)

    def params(self) -> dict[str, Any]:
        """What goes into provenance."""
        if self.table is None:
            return {"ligrec": False}
        return {"ligrec": True, "ligrec_pairs": int(len(self.table)),
                "max_interactions": self.limit}
