"""Gene programs to score cells with: a few short built-in lists, or the sets of a GMT upload.

The built-in programs are short lists of well-known genes written for this project (not copied
from a gene-set database), enough to see an interferon or antigen-presentation response at a
glance. Symbols are human; scoring matches them ignoring case, so mouse data (``Isg15``) is
covered where the names agree. Users with curated sets upload them as GMT. Nothing here draws
widgets.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from c2s_engine.errors import GeneSetFileError
from c2s_engine.training.targets import read_gmt

#: Built-in programs: name -> gene symbols.
BUILT_IN: dict[str, list[str]] = {
    # Interferon-stimulated genes induced by type I interferon (IFN-alpha/beta).
    "Interferon response (type I ISGs)": [
        "ISG15", "ISG20", "IFI6", "IFI27", "IFI35", "IFI44", "IFI44L", "IFIT1", "IFIT2",
        "IFIT3", "IFIT5", "IFITM1", "IFITM3", "MX1", "MX2", "OAS1", "OAS2", "OAS3", "OASL",
        "RSAD2", "HERC5", "XAF1", "LY6E", "BST2", "EPSTI1", "CMPK2", "IRF7", "STAT1", "SAMD9L",
        "PLSCR1",
    ],
    # MHC class I antigen processing and presentation.
    "MHC class I antigen presentation": [
        "HLA-A", "HLA-B", "HLA-C", "HLA-E", "HLA-F", "B2M", "TAP1", "TAP2", "TAPBP", "PSMB8",
        "PSMB9", "PSMB10", "PSME1", "PSME2", "ERAP1", "ERAP2", "CALR", "NLRC5",
    ],
}


def parse_gmt(data: bytes, file_name: str = "upload.gmt") -> dict[str, list[str]]:
    """The gene sets of an uploaded GMT file: ``{set name: [genes]}``.

    Parsed by :func:`c2s_engine.training.targets.read_gmt`, the reader the training code uses,
    so both accept exactly the same files.

    Raises
    ------
    GeneSetFileError
        Not UTF-8 text, a malformed line, a repeated set name, or no set at all (the message
        names ``file_name`` and the line).
    """
    name = Path(file_name.replace("\\", "/")).name or "upload.gmt"
    with tempfile.TemporaryDirectory(prefix="c2s-gmt-") as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            return read_gmt(path)
        except UnicodeDecodeError as exc:
            raise GeneSetFileError(f"{name} is not a UTF-8 text file, so not a GMT file",
                                   "export the gene sets as a GMT text file (UTF-8)") from exc
