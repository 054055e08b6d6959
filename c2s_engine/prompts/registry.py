"""Prompt templates as data: loading, validation, user overrides and formatting.

Each task is one YAML file (``templates/<task>.yaml``) with this schema::

    task: cell_type_prediction          # must equal the file name without .yaml
    title: Cell type annotation
    description: ...
    kind: single_cell                   # single_cell | multi_cell | gene_set | text
    paper: "Table 1; section 4.6.1"
    fields:
      prompt: [num_genes, organism, cell_sentence]   # placeholders of every prompt
      response: [cell_type]                          # placeholders of every response
    cell_field: cell_sentence           # optional: the placeholder that holds cells
    answer:
      format: "A cell type label followed by a period."
      stop: period                      # period | newline | eos
      reserve_tokens: 64                # room kept free for the answer when packing
      no_repeat_ngram_size: 4           # optional, free text: no token 4-gram twice (0: off)
    canonical: {prompt: "...", response: " {cell_type}."}
    paraphrases:                        # optional; a paraphrase may omit its response
      - {prompt: "..."}

Variants are numbered: 0 is the canonical template, 1..n the paraphrases in file order.
User directories are merged over the built-ins (``$C2S_TEMPLATES_DIR`` first, then an
explicit ``templates_dir``): a file there replaces the built-in task of the same id
wholesale, or adds a new task.
"""

from __future__ import annotations

import functools
import os
import random
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from c2s_engine.errors import PromptError

BUILTIN_DIR = Path(__file__).resolve().parent / "templates"
ENV_VAR = "C2S_TEMPLATES_DIR"

# Placeholder names that packing fills in itself.
CELLS_FIELD = "cells"
NUM_CELLS_FIELD = "num_cells"
NUM_GENES_FIELD = "num_genes"

KINDS = ("single_cell", "multi_cell", "gene_set", "text")
STOP_KINDS = ("period", "newline", "eos")

_TOP_KEYS_REQUIRED = (
    "task", "title", "description", "kind", "paper", "fields", "answer", "canonical",
)
_TOP_KEYS_OPTIONAL = ("paraphrases", "cell_field")
_FIELDS_KEYS = ("prompt", "response")
_ANSWER_KEYS = ("format", "stop", "reserve_tokens")
_ANSWER_KEYS_OPTIONAL = ("no_repeat_ngram_size",)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A period ends the answer only when followed by whitespace or the end of the text, so
# gene ids with an inner dot (AL627309.1) do not cut a generated cell sentence short.
_PERIOD_END = re.compile(r"\.(?=\s|$)|\n")


@dataclass(frozen=True)
class StopRule:
    """Where a generated answer ends.

    Attributes
    ----------
    kind
        ``'period'`` (first ``.`` followed by whitespace or end of text, or a newline),
        ``'newline'`` (first newline) or ``'eos'`` (the end-of-sequence token; free text).
    description
        The answer format in words (the ``answer.format`` of the YAML file).
    reserve_tokens
        Tokens to keep free for the answer when packing a prompt into a context window.
    no_repeat_ngram_size
        Decoding never repeats a token n-gram of this size (0: no guard). Small models
        decoding free text greedily fall into loops ("derived from the data: derived from
        the data: ..."); cell sentences must not use it, since multi-token gene symbols share
        sub-word n-grams.
    """

    kind: str
    description: str
    reserve_tokens: int
    no_repeat_ngram_size: int = 0

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Strings after which generation may stop (for ``generate(stop_strings=...)``)."""
        return {"period": (". ", ".\n"), "newline": ("\n",), "eos": ()}[self.kind]

    def cut(self, text: str) -> str:
        """Return the answer contained in generated ``text``, without the stop marker.

        Leading/trailing whitespace is removed; for ``'period'`` the text stops before the
        first period that ends a word (or a newline), for ``'newline'`` before the first
        newline, and for ``'eos'`` the whole text is the answer.
        """
        if self.kind == "period":
            match = _PERIOD_END.search(text)
            text = text[: match.start()] if match else text
        elif self.kind == "newline":
            text = text.split("\n", 1)[0]
        return text.strip()


@dataclass(frozen=True)
class PromptTemplate:
    """One wording (variant) of a task's prompt and response.

    Attributes
    ----------
    task, variant
        Task id and variant number (0 = canonical, 1.. = paraphrases).
    prompt, response
        ``str.format`` templates.
    prompt_fields, response_fields
        Placeholders required by :meth:`format_prompt` and :meth:`format_response`.
    stop
        The answer stop rule.
    kind
        ``single_cell``, ``multi_cell``, ``gene_set`` or ``text``.
    cell_field
        The placeholder that holds the cell sentence(s) ('' when the task has none).
    """

    task: str
    variant: int
    prompt: str
    response: str
    prompt_fields: tuple[str, ...]
    response_fields: tuple[str, ...]
    stop: StopRule
    kind: str
    cell_field: str

    @property
    def fields(self) -> tuple[str, ...]:
        """Every required placeholder: prompt fields, then response-only fields."""
        extra = tuple(f for f in self.response_fields if f not in self.prompt_fields)
        return self.prompt_fields + extra

    @property
    def is_canonical(self) -> bool:
        return self.variant == 0

    def format_prompt(self, **fields: Any) -> str:
        """Fill the prompt; extra fields are ignored so one record can fill both parts.

        Raises
        ------
        PromptError
            If a required placeholder is missing.
        """
        return self._fill(self.prompt, self.prompt_fields, "prompt", fields)

    def format_response(self, **fields: Any) -> str:
        """Fill the response (the expected answer, with its leading space and stop mark)."""
        return self._fill(self.response, self.response_fields, "response", fields)

    def _fill(self, text: str, required: tuple[str, ...], part: str,
              fields: Mapping[str, Any]) -> str:
        missing = [name for name in required if name not in fields]
        if missing:
            raise PromptError(
                f"The {part} of task '{self.task}' needs the field(s) "
                f"{', '.join(repr(m) for m in missing)}, which were not given",
                f"pass {', '.join(f'{m}=...' for m in missing)} "
                f"(this {part} uses: {', '.join(required)})",
            )
        return text.format_map({name: fields[name] for name in required})


@dataclass(frozen=True)
class TaskSpec:
    """A task as read from its YAML file: metadata plus every template variant."""

    task: str
    title: str
    description: str
    kind: str
    paper: str
    prompt_fields: tuple[str, ...]
    response_fields: tuple[str, ...]
    cell_field: str
    stop: StopRule
    variants: tuple[tuple[str, str], ...]  # (prompt, response); [0] is canonical
    source: str

    @property
    def n_paraphrases(self) -> int:
        return len(self.variants) - 1

    def template(self, variant: int) -> PromptTemplate:
        prompt, response = self.variants[variant]
        return PromptTemplate(
            task=self.task, variant=variant, prompt=prompt, response=response,
            prompt_fields=self.prompt_fields, response_fields=self.response_fields,
            stop=self.stop, kind=self.kind, cell_field=self.cell_field,
        )


def format_cells(sentences: Iterable[str]) -> str:
    """Write cell sentences as the multi-cell block of the released checkpoints.

    ``["A B", "C D"]`` becomes ``"Cell 1:\\nA B.\\nCell 2:\\nC D.\\n"``; the block ends with a
    newline so the task's cue follows on its own line.
    """
    sentences = list(sentences)
    if not sentences:
        raise PromptError("No cell sentences were given for the multi-cell block",
                          "pass at least one cell sentence")
    return "".join(f"Cell {i}:\n{s}.\n" for i, s in enumerate(sentences, start=1))


def _placeholders(text: str, where: str, source: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:  # unbalanced braces
        raise PromptError(
            f"Template file {source}: {where} is not a valid template ({exc})",
            "write placeholders as {name} and literal braces as {{ and }}",
        ) from exc
    names = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not _IDENTIFIER.match(name) or spec or conversion:
            raise PromptError(
                f"Template file {source}: {where} has the placeholder {{{name}}} "
                "which is not a plain name",
                "use plain placeholders such as {cell_type}, without indexes, "
                "attributes, conversions or format specs",
            )
        names.add(name)
    return names


def _check_keys(data: Mapping, required: Iterable[str], optional: Iterable[str],
                where: str, source: str) -> None:
    required, optional = tuple(required), tuple(optional)
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise PromptError(
            f"Template file {source}: {where} has unknown key(s) {', '.join(unknown)}",
            f"remove them; allowed keys are {', '.join(required + optional)}",
        )
    missing = [k for k in required if k not in data]
    if missing:
        raise PromptError(
            f"Template file {source}: {where} lacks the required key(s) {', '.join(missing)}",
            "add them (see an example in c2s_engine/prompts/templates)",
        )


def _as_names(value: Any, where: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and _IDENTIFIER.match(v) for v in value
    ):
        raise PromptError(f"Template file {source}: {where} must be a list of field names",
                          "write it as a YAML list, e.g. [num_genes, organism]")
    return tuple(value)


def _variant(entry: Any, where: str, source: str, default_response: str | None
             ) -> tuple[str, str]:
    if not isinstance(entry, Mapping):
        raise PromptError(f"Template file {source}: {where} must be a mapping",
                          "write it as {prompt: '...', response: '...'}")
    # A paraphrase may omit its response and reuse the canonical one.
    if default_response is None:
        _check_keys(entry, ("prompt", "response"), (), where, source)
    else:
        _check_keys(entry, ("prompt",), ("response",), where, source)
    prompt, response = entry["prompt"], entry.get("response", default_response)
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise PromptError(f"Template file {source}: {where} prompt and response must be text",
                          "quote them as YAML strings")
    if not response[:1].isspace():
        raise PromptError(
            f"Template file {source}: {where} response {response!r} does not start with "
            "a space or newline",
            "start the response with a space (e.g. ' {cell_type}.') so the answer "
            "begins at a natural token boundary",
        )
    return prompt, response


def parse_template_file(path: str | Path) -> TaskSpec:
    """Read and validate one template YAML file.

    Raises
    ------
    PromptError
        Naming the file and the problem (bad YAML, missing or unknown keys, placeholders
        that differ from the declared fields, ...).
    """
    path = Path(path)
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        problem = " ".join(str(exc).split())
        raise PromptError(f"Template file {source} is not valid YAML: {problem}",
                          "fix the YAML syntax (quote strings that contain ':' or '{')"
                          ) from exc
    if not isinstance(data, Mapping):
        raise PromptError(f"Template file {source} does not hold a YAML mapping",
                          "start from a copy of a built-in template file")
    _check_keys(data, _TOP_KEYS_REQUIRED, _TOP_KEYS_OPTIONAL, "the file", source)
    for key in ("task", "title", "description", "kind", "paper"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise PromptError(f"Template file {source}: '{key}' must be non-empty text",
                              f"give '{key}' a text value")
    task = data["task"]
    if task != path.stem:
        raise PromptError(
            f"Template file {source} declares task '{task}' but is named '{path.name}'",
            f"rename the file to {task}.yaml or set task: {path.stem}",
        )
    if data["kind"] not in KINDS:
        raise PromptError(f"Template file {source}: kind '{data['kind']}' is unknown",
                          f"use one of {', '.join(KINDS)}")

    fields = data["fields"]
    if not isinstance(fields, Mapping):
        raise PromptError(f"Template file {source}: 'fields' must be a mapping",
                          "write fields: {prompt: [...], response: [...]}")
    _check_keys(fields, _FIELDS_KEYS, (), "'fields'", source)
    prompt_fields = _as_names(fields["prompt"], "'fields.prompt'", source)
    response_fields = _as_names(fields["response"], "'fields.response'", source)

    answer = data["answer"]
    if not isinstance(answer, Mapping):
        raise PromptError(f"Template file {source}: 'answer' must be a mapping",
                          "write answer: {format: ..., stop: period, reserve_tokens: 64}")
    _check_keys(answer, _ANSWER_KEYS, _ANSWER_KEYS_OPTIONAL, "'answer'", source)
    if answer["stop"] not in STOP_KINDS:
        raise PromptError(f"Template file {source}: answer stop '{answer['stop']}' is unknown",
                          f"use one of {', '.join(STOP_KINDS)}")
    reserve = answer["reserve_tokens"]
    if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
        raise PromptError(
            f"Template file {source}: answer reserve_tokens must be a whole number >= 0",
            "set it to the largest expected answer length in tokens",
        )
    no_repeat = answer.get("no_repeat_ngram_size", 0)
    if isinstance(no_repeat, bool) or not isinstance(no_repeat, int) or no_repeat < 0:
        raise PromptError(
            f"Template file {source}: answer no_repeat_ngram_size must be a whole number >= 0",
            "use 0 for no guard, or 3-4 for free text",
        )
    stop = StopRule(kind=answer["stop"], description=str(answer["format"]),
                    reserve_tokens=reserve, no_repeat_ngram_size=no_repeat)

    canonical = _variant(data["canonical"], "'canonical'", source, None)
    paraphrases = data.get("paraphrases") or []
    if not isinstance(paraphrases, list):
        raise PromptError(f"Template file {source}: 'paraphrases' must be a list",
                          "write each paraphrase as a list item '- prompt: ...'")
    variants = [canonical] + [
        _variant(p, f"paraphrase {i}", source, canonical[1])
        for i, p in enumerate(paraphrases, start=1)
    ]
    for i, (prompt, response) in enumerate(variants):
        where = "'canonical'" if i == 0 else f"paraphrase {i}"
        for part, text, declared in (("prompt", prompt, prompt_fields),
                                     ("response", response, response_fields)):
            used = _placeholders(text, f"{where} {part}", source)
            if used != set(declared):
                problems = []
                if set(declared) - used:
                    problems.append("lacks " + ", ".join(
                        "{" + n + "}" for n in sorted(set(declared) - used)))
                if used - set(declared):
                    problems.append("uses undeclared " + ", ".join(
                        "{" + n + "}" for n in sorted(used - set(declared))))
                raise PromptError(
                    f"Template file {source}: {where} {part} {' and '.join(problems)}",
                    f"make every {part} use exactly the placeholders listed in "
                    f"fields.{part} ({', '.join(declared) or 'none'})",
                )

    all_fields = set(prompt_fields) | set(response_fields)
    cell_field = data.get("cell_field")
    if cell_field is None:
        cell_field = next((f for f in (CELLS_FIELD, "cell_sentence") if f in all_fields), "")
    elif cell_field not in all_fields:
        raise PromptError(
            f"Template file {source}: cell_field '{cell_field}' is not one of its fields",
            f"set cell_field to one of {', '.join(sorted(all_fields))}",
        )
    return TaskSpec(
        task=task, title=data["title"].strip(), description=" ".join(data["description"].split()),
        kind=data["kind"], paper=data["paper"], prompt_fields=prompt_fields,
        response_fields=response_fields, cell_field=cell_field, stop=stop,
        variants=tuple(variants), source=source,
    )


def load_templates(path: str | Path) -> dict[str, TaskSpec]:
    """Load and validate every ``*.yaml`` file of a directory (or one file), by task id."""
    path = Path(path).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.glob("*.yaml"))
    else:
        raise PromptError(f"Template directory {path} does not exist",
                          f"create it or point {ENV_VAR} / templates_dir at an existing folder")
    specs = [parse_template_file(f) for f in files]
    return {spec.task: spec for spec in specs}


class Registry:
    """Task templates: the built-ins, overridden by user directories.

    Parameters
    ----------
    templates_dir
        A folder of user YAML files, applied last (wins over everything).
    use_env
        Also apply the folder named by ``$C2S_TEMPLATES_DIR`` (before ``templates_dir``).
    """

    def __init__(self, templates_dir: str | Path | None = None, *, use_env: bool = True) -> None:
        self._specs = load_templates(BUILTIN_DIR)
        env_dir = os.environ.get(ENV_VAR, "") if use_env else ""
        for folder in (env_dir, templates_dir):
            if folder:
                self._specs.update(load_templates(folder))

    def list_tasks(self) -> list[str]:
        """Sorted ids of every available task."""
        return sorted(self._specs)

    def spec(self, task: str) -> TaskSpec:
        """The full :class:`TaskSpec` of ``task`` (metadata, variants, source file)."""
        try:
            return self._specs[task]
        except KeyError:
            raise PromptError(
                f"Unknown prompt task '{task}'",
                f"use one of {', '.join(self.list_tasks())}, or add {task}.yaml to a "
                f"templates folder ({ENV_VAR} or templates_dir=)",
            ) from None

    def get_template(self, task: str, *, variant: str | int = "canonical",
                     rng: np.random.Generator | random.Random | int | None = None
                     ) -> PromptTemplate:
        """One wording of ``task``.

        Parameters
        ----------
        variant
            ``'canonical'`` (the released checkpoints' wording), an int (0 = canonical,
            1.. = paraphrases in file order) or ``'random'`` (uniform over all variants,
            canonical included, drawn from ``rng``).
        rng
            numpy Generator, :class:`random.Random` or seed for ``variant='random'``.
        """
        spec = self.spec(task)
        n = len(spec.variants)
        if variant == "canonical":
            index = 0
        elif variant == "random":
            if isinstance(rng, random.Random):
                index = rng.randrange(n)
            else:
                index = int(np.random.default_rng(rng).integers(n))
        elif isinstance(variant, int) and not isinstance(variant, bool) and 0 <= variant < n:
            index = variant
        else:
            raise PromptError(
                f"Task '{task}' has no template variant {variant!r}",
                f"use 'canonical', 'random' or a number from 0 to {n - 1}",
            )
        return spec.template(index)


@functools.lru_cache(maxsize=8)
def _cached_registry(env_dir: str, templates_dir: str) -> Registry:
    # env_dir is part of the key so a changed $C2S_TEMPLATES_DIR is picked up.
    return Registry(templates_dir or None)


def default_registry(templates_dir: str | Path | None = None) -> Registry:
    """The shared registry (built-ins + ``$C2S_TEMPLATES_DIR`` + ``templates_dir``).

    Files are read once per (environment folder, ``templates_dir``) pair; build a
    :class:`Registry` directly to pick up files edited since.
    """
    return _cached_registry(os.environ.get(ENV_VAR, ""), str(templates_dir or ""))


def list_tasks(templates_dir: str | Path | None = None) -> list[str]:
    """Sorted ids of every available task (see :meth:`Registry.list_tasks`)."""
    return default_registry(templates_dir).list_tasks()


def get_template(task: str, *, variant: str | int = "canonical",
                 rng: np.random.Generator | random.Random | int | None = None,
                 templates_dir: str | Path | None = None) -> PromptTemplate:
    """One wording of ``task`` from the shared registry (see :meth:`Registry.get_template`)."""
    return default_registry(templates_dir).get_template(task, variant=variant, rng=rng)
