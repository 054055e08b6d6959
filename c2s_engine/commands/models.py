"""``c2s models``: the checkpoints C2S Studio knows, what they do and what they need."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from c2s_engine.models import estimate_memory, list_models

GB = 1e9


def _is_cached(name: str) -> bool:
    """Whether a Hugging Face id is already in the local cache (no network is used)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "config.json")
    return isinstance(found, str)


def _embedded_cards() -> list[tuple[Path, dict[str, Any]]]:
    """Models shipped under ``assets/models`` (each folder with a c2s.json card)."""
    from c2s_engine.models.card import CARD_FILENAME
    from c2s_engine.models.loading import MODELS_DIR

    if not MODELS_DIR.is_dir():
        return []
    return [(folder, json.loads((folder / CARD_FILENAME).read_text(encoding="utf-8")))
            for folder in sorted(MODELS_DIR.iterdir()) if (folder / CARD_FILENAME).is_file()]


def model_rows() -> list[dict[str, Any]]:
    """One row per known model: card fields, local availability and memory needs."""
    rows = []
    for folder, card in _embedded_cards():
        name = "demo" if folder.name == "demo" else str(folder)
        rows.append({"n_parameters": 0, "architecture": "?", "context_length": 0, "top_k": 0,
                     "organisms": [], "tasks": [], **card, "name": name, "source": "embedded",
                     "location": str(folder), "available": True})
    for card in list_models():
        row = {**card.to_dict(), "source": "hugging face", "location": card.name,
               "available": _is_cached(card.name)}
        for precision in ("4bit", "bf16"):
            estimate = estimate_memory(card.name, precision, 1, min(2048, card.context_length),
                                       device="cuda", available_bytes=0, advise=False)
            row[f"memory_{precision}_gb"] = round(estimate.total_bytes / GB, 1)
        rows.append(row)
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    rows = model_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        size = f"{row['n_parameters'] / 1e9:.2f}B" if row["n_parameters"] >= 1e8 else \
            f"{row['n_parameters'] / 1e6:.1f}M"
        status = "available" if row["available"] else "not downloaded"
        print(f"{row['name']}  [{row['source']}, {status}]")
        print(f"    {row['architecture']}, {size} parameters, context {row['context_length']}, "
              f"top {row['top_k']} genes, {', '.join(row['organisms'])}")
        if "memory_4bit_gb" in row:
            print(f"    GPU memory for 1 x 2048 tokens: ~{row['memory_4bit_gb']} GB in 4-bit, "
                  f"~{row['memory_bf16_gb']} GB in bf16")
        print(f"    tasks: {', '.join(row['tasks']) or 'unknown'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list known C2S checkpoints, their tasks and memory needs")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_models)
