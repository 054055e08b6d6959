"""Prompt registry: built-in templates, exact canonical wording, overrides and validation."""

from __future__ import annotations

import random
import textwrap

import pytest

from c2s_engine.errors import PromptError
from c2s_engine.prompts import (
    ENV_VAR,
    Registry,
    default_registry,
    format_cells,
    get_template,
    list_tasks,
    load_templates,
)

TABLE_1_TASKS = [
    "cell_language_modeling",
    "cell_type_prediction",
    "cell_type_generation",
    "multi_cell_language_modeling",
    "tissue_prediction",
    "sample_cell_types_prediction",
    "tissue_conditioned_sample_generation",
    "cell_types_conditioned_sample_generation",
    "abstract_conditioned_sample_generation",
    "natural_language_interpretation",
    "gene_set_enumeration",
    "gene_set_naming",
]
EXTRA_TASKS = [
    "cluster_captioning",
    "question_answering",
    "perturbation_response",
    "spatial_niche_label_prediction",
    "spatial_neighbor_generation",
    "spatial_neighborhood_prediction",
    "spatial_same_niche_prediction",
]
MAIN_TASKS = ["cell_type_prediction", "cell_type_generation", "tissue_prediction",
              "natural_language_interpretation", "perturbation_response",
              "question_answering", "cluster_captioning"]

CELL = "MALAT1 CD74 HLA-DRA"


@pytest.fixture(autouse=True)
def _builtin_templates_only(monkeypatch):
    """A developer's own template folder must not change what these tests see."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def sample_fields(names):
    """A distinct, recognisable value per field (the multi-cell block for 'cells')."""
    return {n: format_cells(["GENEA GENEB", "GENEC"]) if n == "cells" else f"<{n}>"
            for n in names}


def test_every_paper_task_is_registered():
    assert list_tasks() == sorted(TABLE_1_TASKS + EXTRA_TASKS)


@pytest.mark.parametrize("task", TABLE_1_TASKS + EXTRA_TASKS)
def test_every_variant_formats_with_its_fields(task):
    spec = default_registry().spec(task)
    assert spec.kind in {"single_cell", "multi_cell", "gene_set", "text"}
    assert spec.title and spec.description and spec.paper
    assert spec.stop.kind in {"period", "newline", "eos"}
    assert spec.n_paraphrases >= (5 if task in MAIN_TASKS else 3)
    for i in range(len(spec.variants)):
        template = get_template(task, variant=i)
        values = sample_fields(template.fields)
        prompt = template.format_prompt(**values)
        response = template.format_response(**values)
        for name in template.prompt_fields:
            assert values[name] in prompt
        for name in template.response_fields:
            assert values[name] in response
        assert "{" not in prompt + response and "}" not in prompt + response
        assert response[0] in " \n"  # answer starts at a natural token boundary
    # paraphrases are distinct wordings, not copies
    assert len({p for p, _ in spec.variants}) == len(spec.variants)


def test_cell_type_prediction_canonical_matches_released_checkpoint():
    t = get_template("cell_type_prediction")
    assert t.is_canonical and t.stop.kind == "period"
    assert t.prompt_fields == ("num_genes", "organism", "cell_sentence")
    assert t.format_prompt(num_genes=3, organism="Homo sapiens", cell_sentence=CELL) == (
        "The following is a list of 3 gene names ordered by descending expression level in a "
        "Homo sapiens cell. Your task is to give the cell type which this cell belongs to "
        "based on its gene expression.\nCell sentence: MALAT1 CD74 HLA-DRA.\n"
        "The cell type corresponding to these genes is:"
    )
    assert t.format_response(cell_type="B cell") == " B cell."


def test_cell_type_generation_canonical_matches_released_checkpoint():
    t = get_template("cell_type_generation")
    assert t.format_prompt(num_genes=200, organism="Mus musculus", cell_type="B cell") == (
        "Generate a list of 200 genes in order of descending expression which represent a "
        "Mus musculus cell of cell type B cell.\nCell sentence:"
    )
    assert t.format_response(cell_sentence=CELL) == " MALAT1 CD74 HLA-DRA."
    assert t.cell_field == "cell_sentence"


def test_perturbation_canonical_matches_reference_tutorial():
    t = get_template("perturbation_response")
    fields = dict(num_genes=3, perturbation_name="IFN-beta", control_cell_sentence=CELL,
                  perturbed_cell_sentence="ISG15 IFI6 MX1")
    assert t.format_prompt(**fields) == (
        "Given the following cell sentence of 3 expressed genes representing a cell's basal "
        "state, predict the cell sentence after applying the perturbation: IFN-beta.\n"
        "Control cell sentence: MALAT1 CD74 HLA-DRA.\nPerturbed cell sentence:"
    )
    assert t.format_response(**fields) == " ISG15 IFI6 MX1."
    assert t.cell_field == "control_cell_sentence"


def test_format_cells_writes_the_multi_cell_block():
    assert format_cells(["A B", "C D E"]) == "Cell 1:\nA B.\nCell 2:\nC D E.\n"
    assert format_cells(iter(["X"])) == "Cell 1:\nX.\n"
    with pytest.raises(PromptError, match="No cell sentences"):
        format_cells([])


def test_tissue_and_abstract_prompts_end_with_the_released_cues():
    block = format_cells(["CD3E CD3D", "MS4A1 CD79A"])
    fields = dict(num_genes=2, num_cells=2, organism="Homo sapiens", cells=block)
    tissue = get_template("tissue_prediction").format_prompt(**fields)
    assert tissue == (
        "The following is a list of 2 gene names ordered by descending expression level for 2 "
        "different Homo sapiens cells. Your task is to give the tissue which these cells "
        "belong to based on their gene expression.\nCell sentences:\n"
        "Cell 1:\nCD3E CD3D.\nCell 2:\nMS4A1 CD79A.\nThe tissue which these cells belong to is:"
    )
    abstract = get_template("natural_language_interpretation").format_prompt(**fields)
    assert abstract.endswith("Cell 2:\nMS4A1 CD79A.\nAbstract summary:")
    assert get_template("natural_language_interpretation").stop.kind == "eos"


def test_multi_cell_generation_response_is_the_cell_block():
    t = get_template("tissue_conditioned_sample_generation")
    assert t.cell_field == "cells" and "cells" in t.response_fields
    assert t.format_response(cells=format_cells(["A B", "C"])) == "\nCell 1:\nA B.\nCell 2:\nC.\n"


def test_question_answering_prompt_has_context_block_then_question():
    t = get_template("question_answering")
    prompt = t.format_prompt(num_genes=2, num_cells=1, organism="Homo sapiens",
                             context="PBMCs from 8 lupus patients, IFN-beta stimulated.",
                             cells=format_cells(["ISG15 MX1"]),
                             question="Which pathway is induced?")
    assert prompt.endswith("Dataset facts: PBMCs from 8 lupus patients, IFN-beta stimulated.\n"
                           "Cell sentences:\nCell 1:\nISG15 MX1.\n"
                           "Question: Which pathway is induced?\nAnswer:")
    assert t.format_response(answer="Type I interferon signalling.") == (
        " Type I interferon signalling.")


def test_missing_field_names_the_placeholder_and_task():
    t = get_template("cell_type_prediction")
    with pytest.raises(PromptError) as err:
        t.format_prompt(num_genes=3, cell_sentence=CELL)
    text = str(err.value)
    assert "'organism'" in text and "'cell_type_prediction'" in text
    assert "Fix: pass organism=..." in text and "\n" not in text
    with pytest.raises(PromptError, match="'cell_type'"):
        t.format_response(organism="Homo sapiens")


def test_extra_fields_are_ignored_so_one_record_fills_both_parts():
    t = get_template("cell_type_prediction")
    record = dict(num_genes=3, organism="Homo sapiens", cell_sentence=CELL, cell_type="NK cell",
                  donor="d1")
    assert t.format_response(**record) == " NK cell."
    assert "MALAT1 CD74 HLA-DRA." in t.format_prompt(**record)


def test_unknown_task_lists_available_tasks():
    with pytest.raises(PromptError) as err:
        get_template("cell_type_predicton")
    text = str(err.value)
    assert "Unknown prompt task 'cell_type_predicton'" in text
    assert "cell_type_prediction, cell_type_generation" not in text  # sorted, not file order
    assert "cell_type_generation, cell_type_prediction" in text


def test_variant_selection():
    spec = default_registry().spec("cell_type_prediction")
    assert get_template("cell_type_prediction", variant=0).prompt == spec.variants[0][0]
    assert get_template("cell_type_prediction", variant=3).prompt == spec.variants[3][0]
    # seeded random draws are reproducible and cover every variant
    a = [get_template("cell_type_prediction", variant="random", rng=s).variant for s in range(64)]
    b = [get_template("cell_type_prediction", variant="random", rng=s).variant for s in range(64)]
    assert a == b and set(a) == set(range(len(spec.variants)))
    rnd = random.Random(0)
    draws = {get_template("tissue_prediction", variant="random", rng=rnd).variant
             for _ in range(200)}
    assert draws == set(range(len(default_registry().spec("tissue_prediction").variants)))
    with pytest.raises(PromptError, match="no template variant 99"):
        get_template("cell_type_prediction", variant=99)
    with pytest.raises(PromptError, match="no template variant 'first'"):
        get_template("cell_type_prediction", variant="first")


@pytest.mark.parametrize(("kind", "generated", "answer"), [
    ("period", " B cell.", "B cell"),
    ("period", " AL627309.1 CD3E MT-CO1. Cell 2", "AL627309.1 CD3E MT-CO1"),
    ("period", " CD14+ Monocyte\nThe next", "CD14+ Monocyte"),
    ("period", " no period at all", "no period at all"),
    ("newline", " yes\nno", "yes"),
    ("eos", " First sentence. Second one.\n", "First sentence. Second one."),
])
def test_stop_rule_cuts_the_answer(kind, generated, answer):
    task = {"period": "cell_type_prediction", "newline": None, "eos": "cluster_captioning"}[kind]
    if task is None:
        from c2s_engine.prompts import StopRule

        rule = StopRule(kind="newline", description="", reserve_tokens=8)
    else:
        rule = get_template(task).stop
    assert rule.cut(generated) == answer


def test_stop_strings():
    assert get_template("cell_type_prediction").stop.stop_strings == (". ", ".\n")
    assert get_template("cluster_captioning").stop.stop_strings == ()
    assert get_template("cell_type_prediction").stop.reserve_tokens == 64


def test_free_text_templates_carry_a_repetition_guard_and_others_do_not():
    for task in ("question_answering", "cluster_captioning", "natural_language_interpretation"):
        assert get_template(task).stop.no_repeat_ngram_size == 4
    # Labels and cell sentences: multi-token gene symbols share sub-word n-grams.
    for task in ("cell_type_prediction", "cell_type_generation",
                 "cell_types_conditioned_sample_generation", "perturbation_response"):
        assert get_template(task).stop.no_repeat_ngram_size == 0


# ----------------------------------------------------------------- user overrides

OVERRIDE = textwrap.dedent("""\
    task: cell_type_prediction
    title: Lab cell typing
    description: Our lab's wording.
    kind: single_cell
    paper: "Table 1"
    fields:
      prompt: [organism, cell_sentence]
      response: [cell_type]
    answer:
      format: "A label and a period."
      stop: period
      reserve_tokens: 16
    canonical:
      prompt: "{organism} cell: {cell_sentence}.\\nType:"
      response: " {cell_type}."
    paraphrases:
      - prompt: "Cell ({organism}): {cell_sentence}.\\nCell type:"
    """)


def write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_user_directory_overrides_builtin_and_adds_tasks(tmp_path):
    write(tmp_path, "cell_type_prediction.yaml", OVERRIDE)
    write(tmp_path, "my_task.yaml", OVERRIDE.replace("task: cell_type_prediction",
                                                       "task: my_task"))
    registry = Registry(templates_dir=tmp_path, use_env=False)
    t = registry.get_template("cell_type_prediction")
    assert t.format_prompt(organism="Homo sapiens", cell_sentence="A B") == (
        "Homo sapiens cell: A B.\nType:")
    assert t.stop.reserve_tokens == 16
    # the paraphrase without a response reuses the canonical response
    assert registry.get_template("cell_type_prediction", variant=1).response == " {cell_type}."
    assert registry.spec("cell_type_prediction").source == str(tmp_path /
                                                                "cell_type_prediction.yaml")
    assert "my_task" in registry.list_tasks() and len(registry.list_tasks()) == 20
    # untouched built-ins stay
    assert registry.get_template("tissue_prediction").prompt == \
        get_template("tissue_prediction").prompt
    # module-level functions take the same templates_dir
    assert "my_task" in list_tasks(templates_dir=tmp_path)
    assert "my_task" not in list_tasks()


def test_env_directory_applies_and_explicit_directory_wins(tmp_path, monkeypatch):
    env_dir, explicit = tmp_path / "env", tmp_path / "explicit"
    write(env_dir, "cell_type_prediction.yaml", OVERRIDE)
    write(explicit, "cell_type_prediction.yaml",
          OVERRIDE.replace('"{organism} cell: {cell_sentence}.\\nType:"',
                           '"Explicit {organism}: {cell_sentence}.\\nType:"'))
    monkeypatch.setenv(ENV_VAR, str(env_dir))
    assert get_template("cell_type_prediction").prompt == "{organism} cell: {cell_sentence}.\nType:"
    assert Registry(explicit).get_template("cell_type_prediction").prompt.startswith("Explicit")
    assert get_template("cell_type_prediction", templates_dir=explicit).prompt.startswith(
        "Explicit")
    assert Registry(use_env=False).get_template("cell_type_prediction").prompt.startswith(
        "The following is a list of {num_genes}")
    monkeypatch.delenv(ENV_VAR)
    assert get_template("cell_type_prediction").prompt.startswith("The following is a list")


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.replace("title: Lab cell typing\n", "title: [unclosed\n"), "is not valid YAML"),
    (lambda s: s.replace("kind: single_cell\n", ""), "lacks the required key(s) kind"),
    (lambda s: s + "colour: blue\n", "unknown key(s) colour"),
    (lambda s: s.replace('- prompt: "Cell ({organism}): {cell_sentence}.\\nCell type:"',
                         '- prompt: "Cell: {cell_sentence}.\\nCell type:"'),
     "paraphrase 1 prompt lacks {organism}"),
    (lambda s: s.replace('response: " {cell_type}."', 'response: " {cell_type} {tissue}."'),
     "'canonical' response uses undeclared {tissue}"),
    (lambda s: s.replace('response: " {cell_type}."', 'response: "{cell_type}."'),
     "does not start with a space or newline"),
    (lambda s: s.replace("stop: period", "stop: comma"), "answer stop 'comma' is unknown"),
    (lambda s: s.replace("kind: single_cell", "kind: bulk"), "kind 'bulk' is unknown"),
    (lambda s: s.replace("task: cell_type_prediction", "task: cell_typing"),
     "declares task 'cell_typing' but is named 'cell_type_prediction.yaml'"),
    (lambda s: s.replace("{cell_sentence}.\\nType:", "{cell_sentence!r}.\\nType:"),
     "{cell_sentence} which is not a plain name"),
    (lambda s: s.replace("reserve_tokens: 16", "reserve_tokens: lots"),
     "reserve_tokens must be a whole number"),
    (lambda s: s.replace("reserve_tokens: 16", "reserve_tokens: 16\n  no_repeat_ngram_size: -1"),
     "no_repeat_ngram_size must be a whole number >= 0"),
    (lambda s: s.replace("paraphrases:\n", "paraphrases:\n  - wording: x\n"),
     "paraphrase 1 has unknown key(s) wording"),
])
def test_malformed_template_names_file_and_problem(tmp_path, change, message):
    path = write(tmp_path, "cell_type_prediction.yaml", change(OVERRIDE))
    with pytest.raises(PromptError) as err:
        Registry(templates_dir=tmp_path, use_env=False)
    text = str(err.value)
    assert str(path) in text
    assert message in text
    assert "Fix:" in text


def test_missing_user_directory_is_reported(tmp_path):
    with pytest.raises(PromptError, match="does not exist"):
        load_templates(tmp_path / "nowhere")


def test_load_templates_reads_one_file(tmp_path):
    path = write(tmp_path, "cell_type_prediction.yaml", OVERRIDE)
    specs = load_templates(path)
    assert list(specs) == ["cell_type_prediction"]
    assert specs["cell_type_prediction"].n_paraphrases == 1
