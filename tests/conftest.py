"""Shared fixtures. Real public datasets live in ../shared/data (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("C2S_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(relpath: str) -> Path:
    """Path of a file under ../shared/data, or skip the test cleanly when it is absent."""
    path = SHARED_DATA / relpath
    if not path.exists():
        pytest.skip(f"shared test data not available: {path}")
    return path


@pytest.fixture(scope="session")
def pbmc68k():
    """scanpy's bundled 700-cell PBMC subset (ships inside scanpy; no download)."""
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


@pytest.fixture
def pbmc68k_copy(pbmc68k):
    return pbmc68k.copy()


@pytest.fixture(autouse=True)
def _isolated_result_cache(tmp_path_factory, monkeypatch):
    """Model results are cached on disk; tests never read or write the user's cache."""
    monkeypatch.setenv("C2S_CACHE_DIR", str(tmp_path_factory.mktemp("c2s-cache")))
    # web-app sessions save their work on disk; never into the user's home folder
    monkeypatch.setenv("C2S_WORKSPACE_DIR", str(tmp_path_factory.mktemp("c2s-workspaces")))
    # "auto" precision on CPU depends on the processor (bf16 where it has bf16 instructions):
    # pin it so results do not depend on the CI machine; tests of that choice override it.
    monkeypatch.setenv("C2S_CPU_PRECISION", "fp32")
