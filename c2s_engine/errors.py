"""Typed, user-facing errors.

Every problem a user can cause (a bad file, an unusable matrix, a missing
template) is raised as a subclass of :class:`C2SError`. Each carries a short
``message`` naming the problem and a ``fix`` telling the user what to do, so
the CLI and the web app can show one readable line instead of a traceback.
"""

from __future__ import annotations


class C2SError(Exception):
    """Base class for every error a user can act on."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message.rstrip(".")
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.message}."
        if self.fix:
            text += f" Fix: {self.fix.rstrip('.')}."
        return " ".join(text.split())  # always one line


class UnsupportedFormatError(C2SError):
    """The file extension is not one we can read."""


class CorruptFileError(C2SError):
    """The file has a supported extension but cannot be parsed (truncated, wrong content)."""


class EncodingError(C2SError):
    """Names in the file are not valid UTF-8."""


class EmptyDataError(C2SError):
    """The matrix has no cells, no genes, or no values."""


class NonNumericDataError(C2SError):
    """A text table holds values that are not numbers."""


class NonFiniteValuesError(C2SError):
    """The expression matrix contains NaN or infinite values."""


class NegativeValuesError(C2SError):
    """The expression matrix contains negative values (e.g. scaled data) and no usable alternative."""


class GeneIdentifierError(C2SError):
    """Gene identifiers cannot be turned into gene symbols."""


class NormalizationError(C2SError):
    """No matrix suitable for the C2S expression convention could be found."""


class SentenceError(C2SError):
    """Cell sentences are missing or inconsistent with the data."""


class PromptError(C2SError):
    """A prompt template is missing, malformed, or lacks a required field."""


class ContextBudgetError(C2SError):
    """Not even one cell (or the minimum number of genes) fits in the context budget."""


class ModelNotFoundError(C2SError):
    """A model name, folder or Hugging Face id cannot be resolved to a checkpoint."""


class DemoModelMissingError(ModelNotFoundError):
    """The embedded demo model was asked for but is not installed."""


class UnsafeWeightsError(C2SError):
    """A checkpoint only offers pickled weights (.bin/.pt/.pth), which could run code when loaded."""


class UnsupportedArchitectureError(C2SError):
    """The checkpoint's architecture is not a causal language model transformers can build."""


class ModelCardError(C2SError):
    """A c2s.json model card is unreadable or holds invalid fields."""


class DeviceUnavailableError(C2SError):
    """The requested device or precision cannot be used on this machine."""


class InsufficientMemoryError(C2SError):
    """The model would not fit in the free memory of the chosen device."""


class CancelledError(C2SError):
    """The user cancelled a long model call; the work finished before the cancel is kept.

    Attributes
    ----------
    done, total
        Items (cells, prompts, texts) finished before the cancel, and items asked for.
    partial
        What was computed so far, in the form the cancelled function documents (for the
        inference functions: ``{input_index: result}``), so a caller can keep or cache it.
    """

    def __init__(self, message: str, fix: str | None = None, *, done: int = 0, total: int = 0,
                 partial: object = None) -> None:
        super().__init__(message, fix)
        self.done = done
        self.total = total
        self.partial = partial


class MissingFileError(C2SError):
    """The input path does not exist."""


class SpatialDataError(C2SError):
    """Spatial coordinates or the spatial neighbour graph are missing or unusable."""


class InteractionTableError(C2SError):
    """A ligand-receptor table cannot be read or lacks its ligand/receptor columns."""


class ObsColumnError(C2SError):
    """A column named by the user (labels, truth, groupby) is not in ``adata.obs``."""


class LabelsError(C2SError):
    """Candidate or true cell labels are missing, empty or unreadable."""


class TaskOptionError(C2SError):
    """A task option is out of range or conflicts with another option."""


class GroupingError(C2SError):
    """A cluster name or a list of cells (a scope) does not exist in the data."""


class QuestionError(C2SError):
    """A question for answer_question is empty or unusable."""


class MetricError(C2SError):
    """Inputs to an evaluation metric are unusable (too few cells, no shared genes, bad sizes)."""


class WorkspaceError(C2SError):
    """A web-app workspace id is malformed, or its saved files cannot be read."""


class GeneSetFileError(C2SError):
    """A gene-set (GMT) file cannot be parsed or holds no gene set."""


class MissingDependencyError(C2SError):
    """An optional package a step needs (e.g. igraph for Leiden clustering) is not installed."""
