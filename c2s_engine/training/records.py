"""Run records: what a training or evaluation run used and produced, as JSON next to its output.

A record answers "how was this model made, and how good is it?" without the code that made it:
the full config, the sha256 of every input file, the split, the seed, the metrics and the
versions of the libraries that ran. Training writes :data:`RECORD_FILENAME` into the saved
model folder; ``c2s evaluate`` writes its own record and adds its metrics under
``metrics['held_out'][task]`` of the model's training record.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RECORD_FILENAME = "c2s_run.json"
_VERSIONED = ("torch", "transformers", "tokenizers", "trl", "peft", "accelerate", "datasets",
              "anndata", "scanpy", "numpy")


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of every file of a folder (relative names and bytes, in name order).

    Folders are hashed so a 10x ``mtx`` directory gets one stable fingerprint.
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def describe_inputs(paths: list[str | Path]) -> list[dict[str, Any]]:
    """``[{path, sha256, bytes}]`` for each input file or folder."""
    described = []
    for path in map(Path, paths):
        size = (sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir()
                else path.stat().st_size)
        described.append({"path": str(path), "sha256": sha256_path(path), "bytes": int(size)})
    return described


def library_versions() -> dict[str, str]:
    """Versions of Python, C2S Studio and the libraries that decide a run's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    from c2s_engine import __version__

    versions = {"python": platform.python_version(), "c2s_studio": __version__}
    for name in _VERSIONED:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """One run of ``c2s train`` or ``c2s evaluate``.

    Attributes
    ----------
    kind
        ``'pretrain'``, ``'sft'``, ``'grpo'`` or ``'evaluate'``.
    config
        The full run configuration (after defaults and presets were applied).
    seed
        Seed of every random choice of the run.
    command
        The command line of the process (e.g. ``/usr/bin/c2s train sft --config cfg.yaml``).
    data
        ``[{path, sha256, bytes}]`` of every input file (:func:`describe_inputs`).
    split
        How examples were divided into train and held-out sets (cells, donors or conditions
        held out), as the dataset builder reports it.
    metrics
        Training metrics (final loss, mean reward, ...) and, under ``'held_out'``, one entry per
        evaluated task.
    versions
        :func:`library_versions` at the time of the run.
    output
        Where the run wrote its model or results.
    started, finished
        UTC timestamps (ISO 8601).
    """

    kind: str
    config: dict[str, Any]
    seed: int
    command: str = field(default_factory=lambda: shlex.join(sys.argv))
    data: list[dict[str, Any]] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=lambda: {"held_out": {}})
    versions: dict[str, str] = field(default_factory=library_versions)
    output: str = ""
    started: str = field(default_factory=_now)
    finished: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (numpy scalars and arrays become numbers and lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=_plain))

    def save(self, path: str | Path) -> Path:
        """Write the record as indented JSON, stamping ``finished``; returns the path."""
        self.finished = _now()
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        """Read a record written by :meth:`save`."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
