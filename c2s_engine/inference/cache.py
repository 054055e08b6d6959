"""On-disk cache of model results, one entry per input item.

A result is filed under two sha256 keys: the *call* (model id, revision, task and the
JSON-canonicalised parameters; see :func:`call_key`) and the *item* (the exact prompt
or sentence text; see :func:`content_hash`). Caching per item rather than per call
means a dataset that shares cells with an earlier run (a subset, a re-run after adding
cells, a resumed cancelled run) recomputes only the new items; :meth:`ResultCache.map`
does that lookup-compute-store round.

Entries live in one SQLite file (``results.sqlite``) in ``$C2S_CACHE_DIR`` or
``~/.cache/c2s-studio``: a single file stays fast with hundreds of thousands of cells,
and SQLite makes concurrent writers (several app sessions) safe. Values are stored as
JSON text, or for numpy arrays as ``.npy`` bytes written and read with
``allow_pickle=False``; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CACHE_ENV = "C2S_CACHE_DIR"
CACHE_FILE = "results.sqlite"
# Part of every call key: bump it when the meaning of stored values changes.
FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$C2S_CACHE_DIR`` when set, else ``~/.cache/c2s-studio``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "c2s-studio"


def canonical_json(value: Any) -> str:
    """One JSON text per value: sorted keys, no spaces, tuples as lists, no NaN.

    Raises
    ------
    ValueError
        If ``value`` holds something JSON cannot represent exactly.
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cache parameters must be plain JSON values: {err}") from err


def content_hash(text: str) -> str:
    """sha256 hex digest of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def call_key(model_id: str, revision: str, task: str, params: Mapping[str, Any]) -> str:
    """Key of one kind of call: same model weights, task and parameters.

    Parameters
    ----------
    model_id, revision
        The model's name and exact revision (``LoadedModel.name`` / ``.revision``).
    task
        What was computed (``'generate:cell_type_prediction'``, ``'embed'``, ...).
    params
        Everything else that changes the result (max_new_tokens, stop strings, seed,
        candidates, layer, precision, ...). Batch size should not be included.
    """
    return content_hash(canonical_json({
        "format": FORMAT_VERSION, "model": model_id, "revision": revision, "task": task,
        "params": params,
    }))


@dataclass(frozen=True)
class CacheKey:
    """Address of one cached result: the call key and the item's content hash."""

    call: str
    item: str


def _encode(value: Any) -> tuple[str, bytes]:
    if isinstance(value, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return "npy", buffer.getvalue()
    return "json", canonical_json(value).encode("utf-8")


def _decode(kind: str, blob: bytes) -> Any:
    if kind == "npy":
        return np.load(io.BytesIO(blob), allow_pickle=False)
    return json.loads(blob.decode("utf-8"))


class ResultCache:
    """Per-item result store (see the module docstring).

    Parameters
    ----------
    directory
        Where ``results.sqlite`` lives; :func:`default_cache_dir` when None. Created
        on first use.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.path = self.directory / CACHE_FILE

    def _connect(self) -> sqlite3.Connection:
        # A connection per operation keeps the cache usable from any thread.
        self.directory.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("CREATE TABLE IF NOT EXISTS results (call TEXT, item TEXT, kind TEXT, "
                    "value BLOB, PRIMARY KEY (call, item))")
        return con

    def get(self, key: CacheKey) -> Any | None:
        """The stored value, or None when absent."""
        return self.get_many(key.call, [key.item]).get(key.item)

    def put(self, key: CacheKey, value: Any) -> None:
        """Store ``value`` (JSON-able, or a numpy array) under ``key``, replacing any."""
        self.put_many(key.call, {key.item: value})

    def get_many(self, call: str, items: Sequence[str]) -> dict[str, Any]:
        """``{item: value}`` for the items of ``call`` that are stored."""
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(items))
        with closing(self._connect()) as con:
            # SQLite limits the number of bound parameters per statement.
            for start in range(0, len(unique), 500):
                part = unique[start:start + 500]
                rows = con.execute(
                    f"SELECT item, kind, value FROM results WHERE call = ? AND item IN "
                    f"({','.join('?' * len(part))})", [call, *part])
                found.update((item, _decode(kind, blob)) for item, kind, blob in rows)
        return found

    def put_many(self, call: str, values: Mapping[str, Any]) -> None:
        """Store several ``{item: value}`` of ``call`` in one transaction."""
        rows = [(call, item, *_encode(value)) for item, value in values.items()]
        with closing(self._connect()) as con, con:
            con.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)", rows)

    def map(self, call: str, texts: Sequence[str],
            compute: Callable[[list[str]], Sequence[Any]]) -> tuple[list[Any], int]:
        """Values for every text, computing and storing only those not yet cached.

        Parameters
        ----------
        call
            A :func:`call_key`.
        texts
            Input items (prompts or sentences); identical texts are computed once.
        compute
            Called once, with the missing texts in input order (not at all when every
            text is cached); returns one storable value per text.

        Returns
        -------
        values, n_cached
            One value per text in input order, and how many came from the cache. Arrays
            come back as numpy arrays, everything else as JSON values (lists, dicts).
        """
        hashes = [content_hash(t) for t in texts]
        found = self.get_many(call, hashes)
        n_cached = sum(h in found for h in hashes)
        missing = {h: t for h, t in zip(hashes, texts, strict=True) if h not in found}
        if missing:
            computed = list(compute(list(missing.values())))
            if len(computed) != len(missing):
                raise ValueError(f"compute returned {len(computed)} values for "
                                 f"{len(missing)} texts")
            fresh = dict(zip(missing, computed, strict=True))
            self.put_many(call, fresh)
            # Round-trip fresh values so they have the same types as cached ones.
            found.update((h, _decode(*_encode(v))) for h, v in fresh.items())
        return [found[h] for h in hashes], n_cached
