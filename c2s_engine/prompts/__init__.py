"""Prompt registry: task templates kept as YAML data, with user overrides.

Public API: :func:`list_tasks`, :func:`get_template`, :class:`PromptTemplate`
(``format_prompt``, ``format_response``, ``fields``, ``stop``), :func:`format_cells`,
:func:`load_templates` and :class:`Registry`. See :mod:`c2s_engine.prompts.registry`
for the YAML schema.
"""

from c2s_engine.prompts.registry import (
    BUILTIN_DIR,
    CELLS_FIELD,
    ENV_VAR,
    NUM_CELLS_FIELD,
    NUM_GENES_FIELD,
    PromptTemplate,
    Registry,
    StopRule,
    TaskSpec,
    default_registry,
    format_cells,
    get_template,
    list_tasks,
    load_templates,
    parse_template_file,
)

__all__ = [
    "BUILTIN_DIR",
    "CELLS_FIELD",
    "ENV_VAR",
    "NUM_CELLS_FIELD",
    "NUM_GENES_FIELD",
    "PromptTemplate",
    "Registry",
    "StopRule",
    "TaskSpec",
    "default_registry",
    "format_cells",
    "get_template",
    "list_tasks",
    "load_templates",
    "parse_template_file",
]
