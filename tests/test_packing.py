"""Token-budget packing, checked with a locally trained tokenizer (no downloads).

With the WordLevel tiny tokenizer every gene, word, word-final punctuation mark and newline
is one token and <bos> is prepended, so prompt lengths are computed by hand below.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from tiny_models import tiny_tokenizer

from c2s_engine.errors import ContextBudgetError, PromptError
from c2s_engine.packing import PackedPrompt, count_tokens, pack_cells, pack_genes
from c2s_engine.prompts import ENV_VAR, Registry, format_cells, get_template

DEMO = textwrap.dedent("""\
    task: pack_demo
    title: Packing demo
    description: A short multi-cell prompt whose token count is easy to compute by hand.
    kind: multi_cell
    paper: "none"
    fields:
      prompt: [organism, cells]
      response: [tissue]
    answer:
      format: "A tissue and a period."
      stop: period
      reserve_tokens: 4
    canonical:
      prompt: "Cells of {organism}:\\n{cells}Tissue:"
      response: " {tissue}."
    """)
HUMAN = {"organism": "Homo sapiens"}
# <bos> Cells of Homo sapiens : \n  ...  Tissue :  -> 9 tokens outside the cell block
DEMO_BASE = 9


def cell_tokens(n_genes: int) -> int:
    """'Cell i:\\n<genes>.\\n' is Cell, i, :, \\n, the genes, ., \\n."""
    return n_genes + 6


@pytest.fixture(autouse=True)
def _builtin_templates_only(monkeypatch):
    """A developer's own template folder must not change what these tests see."""
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("templates")
    (folder / "pack_demo.yaml").write_text(DEMO, encoding="utf-8")
    return Registry(folder, use_env=False).get_template("pack_demo")


@pytest.fixture(scope="module")
def pbmc_sentences(pbmc68k):
    """Real cell sentences: pbmc68k genes of each cell ordered by descending value."""
    x = np.asarray(pbmc68k.X)
    names = np.asarray(pbmc68k.var_names)
    return [" ".join(names[np.argsort(-x[i], kind="stable")][:100]) for i in range(40)]


def genes(n: int, prefix: str = "G") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def test_tokenizer_counts_one_token_per_gene(tok, demo):
    assert count_tokens(tok, "HLA-DRA RP11-782C8.1 CD3E.") == 1 + 4  # <bos>, 3 genes, "."
    for n in range(4):
        prompt = demo.format_prompt(cells=format_cells([genes(5)] * n) if n else "", **HUMAN)
        assert count_tokens(tok, prompt) == DEMO_BASE + n * cell_tokens(5)


@pytest.mark.parametrize(("context", "reserve", "expected"), [
    (60, 0, 4),      # 9 + 4*11 = 53 <= 60 < 64
    (64, 0, 5),      # exactly full
    (60, 10, 3),     # budget 50: 42 fits, 53 does not
    (60, None, 4),   # template reserve 4 -> budget 56
    (10_000, 0, 10),  # everything fits
])
def test_pack_cells_fits_the_hand_computed_number_of_cells(tok, demo, context, reserve, expected):
    sentences = [genes(5, prefix=f"C{i}G") for i in range(10)]
    packed = pack_cells(demo, sentences, tok, context_length=context, reserve_tokens=reserve,
                        fields=HUMAN)
    reserve = 4 if reserve is None else reserve
    assert isinstance(packed, PackedPrompt)
    assert packed.n_cells_used == expected
    assert packed.n_cells_available == 10
    assert packed.n_genes_per_cell == 5
    assert packed.n_tokens == DEMO_BASE + expected * cell_tokens(5)
    assert packed.budget == context - reserve and packed.reserve_tokens == reserve
    assert packed.fraction_of_budget == pytest.approx(packed.n_tokens / packed.budget)
    assert packed.text == f"Cells of Homo sapiens:\n{format_cells(sentences[:expected])}Tissue:"
    assert packed.response == ""
    assert count_tokens(tok, packed.text) == packed.n_tokens <= packed.budget


def test_pack_cells_keeps_order_and_whole_cells_of_uneven_length(tok, demo):
    sentences = [genes(2, "A"), genes(7, "B"), genes(1, "C"), genes(4, "D")]
    # 9 + 8 + 13 = 30; adding the 1-gene cell -> 37; adding the 4-gene cell -> 47
    packed = pack_cells(demo, sentences, tok, context_length=40, reserve_tokens=0, fields=HUMAN)
    assert packed.n_cells_used == 3 and packed.n_tokens == 37
    assert packed.n_genes_per_cell == 7  # longest cell used
    assert "D0" not in packed.text and packed.text.count("Cell ") == 3


def test_pack_cells_raises_when_not_even_one_cell_fits(tok, demo):
    with pytest.raises(ContextBudgetError) as err:
        pack_cells(demo, [genes(5)], tok, context_length=19, reserve_tokens=0, fields=HUMAN)
    text = str(err.value)
    assert "Not even 1 cell(s) fit" in text and "'pack_demo'" in text
    assert "takes 20 tokens but the budget is 19 (19 context - 0 reserved" in text
    assert "Fix: use fewer genes per cell" in text and "longer context_length" in text
    with pytest.raises(ContextBudgetError, match="Not even 3 cell"):
        pack_cells(demo, [genes(5)] * 5, tok, context_length=41, reserve_tokens=0,
                   fields=HUMAN, min_cells=3)
    with pytest.raises(ContextBudgetError, match="leaves no room"):
        pack_cells(demo, [genes(5)], tok, context_length=64, reserve_tokens=64, fields=HUMAN)


def test_pack_cells_argument_problems(tok, demo):
    with pytest.raises(PromptError, match="2 cell sentence.* min_cells is 3"):
        pack_cells(demo, ["A", "B"], tok, fields=HUMAN, min_cells=3)
    with pytest.raises(PromptError, match="'organism'"):
        pack_cells(demo, ["A"], tok)
    with pytest.raises(PromptError, match="no placeholder for cells"):
        pack_cells(get_template("cell_type_prediction"), ["A"], tok)
    with pytest.raises(PromptError, match="in its response.*include_response=True"):
        pack_cells(get_template("tissue_conditioned_sample_generation"), ["A"], tok)


@pytest.mark.parametrize(("lengths", "budget", "expected_k"), [
    ((8, 8, 8), 50, 7),   # 9 + 3*(k+6) = 27 + 3k <= 50
    ((8, 8, 8), 51, 8),   # every gene fits
    ((8, 3, 5), 40, 5),   # 27 + 5 + 3 + 5 = 40
    ((8, 3, 5), 39, 4),
])
def test_pack_genes_finds_the_largest_uniform_gene_count(tok, demo, lengths, budget, expected_k):
    sentences = [genes(n, f"C{i}G") for i, n in enumerate(lengths)]
    packed = pack_genes(demo, sentences, tok, context_length=budget, reserve_tokens=0,
                        fields=HUMAN)
    assert packed.n_genes_per_cell == expected_k
    assert packed.n_cells_used == packed.n_cells_available == 3
    cut = [" ".join(s.split()[:expected_k]) for s in sentences]
    assert packed.text == f"Cells of Homo sapiens:\n{format_cells(cut)}Tissue:"
    assert packed.n_tokens == DEMO_BASE + sum(min(n, expected_k) + 6 for n in lengths)
    assert packed.n_tokens <= budget


def test_pack_genes_single_cell_canonical_prompt_hand_count(tok, pbmc_sentences):
    template = get_template("cell_type_prediction")
    # <bos> 1 + first sentence 20 + second sentence 19 + \n + "Cell sentence : <k> ." (k+4)
    # + \n + "The cell type corresponding to these genes is :" 9  ->  55 + k tokens
    sentence = pbmc_sentences[0]
    for k in (1, 10, 100):
        prompt = template.format_prompt(num_genes=k, organism="Homo sapiens",
                                        cell_sentence=" ".join(sentence.split()[:k]))
        assert count_tokens(tok, prompt) == 55 + k
    packed = pack_genes(template, sentence, tok, context_length=200,
                        fields={"organism": "Homo sapiens"})
    assert packed.reserve_tokens == 64 and packed.budget == 136
    assert packed.n_genes_per_cell == 81 and packed.n_tokens == 136
    assert "list of 81 gene names" in packed.text
    assert f"Cell sentence: {' '.join(sentence.split()[:81])}.\n" in packed.text
    with pytest.raises(ContextBudgetError, match="Not even 1 gene"):
        pack_genes(template, sentence, tok, context_length=55, reserve_tokens=0,
                   fields={"organism": "Homo sapiens"})


def test_pack_genes_uses_the_templates_cell_field(tok):
    template = get_template("perturbation_response")
    control = genes(30, "CTRL")
    # <bos> 1 + "Given ... basal state ," 15 + "predict ... perturbation : IFN-beta ." 11 + \n
    # + "Control cell sentence : <k> ." (k+5) + \n + "Perturbed cell sentence :" 4 -> 38 + k
    packed = pack_genes(template, control, tok, context_length=50, reserve_tokens=0,
                        fields={"perturbation_name": "IFN-beta"})
    assert packed.n_genes_per_cell == 12 and packed.n_tokens == 50
    assert f"Control cell sentence: {genes(12, 'CTRL')}.\n" in packed.text
    assert "sentence of 12 expressed genes" in packed.text


def test_pack_genes_argument_problems(tok, demo):
    with pytest.raises(PromptError, match="holds one cell but 2 sentences"):
        pack_genes(get_template("cell_type_prediction"), ["A", "B"], tok)
    with pytest.raises(PromptError, match="no placeholder for cells"):
        pack_genes(get_template("gene_set_naming"), ["A"], tok)
    with pytest.raises(PromptError, match="longest cell sentence has 2 gene.*min_genes is 3"):
        pack_genes(demo, ["A B", "C"], tok, fields=HUMAN, min_genes=3)


@pytest.mark.parametrize("model", ["wordlevel", "bpe"])
def test_real_cells_are_packed_maximally_without_exceeding_budget(model, pbmc_sentences):
    tok = tiny_tokenizer(model)
    template = get_template("tissue_prediction")
    fields = {"organism": "Homo sapiens"}
    packed = pack_cells(template, pbmc_sentences, tok, context_length=2048, fields=fields)
    n = packed.n_cells_used
    assert 1 <= n < len(pbmc_sentences)
    assert count_tokens(tok, packed.text) == packed.n_tokens <= packed.budget == 2048 - 64
    one_more = template.format_prompt(num_genes=100, num_cells=n + 1,
                                      cells=format_cells(pbmc_sentences[:n + 1]), **fields)
    assert count_tokens(tok, one_more) > packed.budget
    assert f"for {n} different Homo sapiens cells" in packed.text

    few = pbmc_sentences[:5]
    by_genes = pack_genes(template, few, tok, context_length=400, fields=fields)
    k = by_genes.n_genes_per_cell
    assert by_genes.n_tokens <= by_genes.budget
    bigger = template.format_prompt(
        num_genes=k + 1, num_cells=5, **fields,
        cells=format_cells([" ".join(s.split()[:k + 1]) for s in few]))
    assert count_tokens(tok, bigger) > by_genes.budget


def test_training_example_packs_cells_in_the_response(tok, pbmc_sentences):
    template = get_template("tissue_conditioned_sample_generation")
    fields = {"organism": "Homo sapiens", "tissue": "blood"}
    packed = pack_cells(template, pbmc_sentences, tok, context_length=1500, fields=fields,
                        include_response=True)
    n = packed.n_cells_used
    assert packed.reserve_tokens == 0 and packed.budget == 1500
    assert packed.response == "\n" + format_cells(pbmc_sentences[:n])
    assert packed.text.endswith(f"for {n} different Homo sapiens cells from a blood tissue."
                                "\nCell sentences:")
    assert count_tokens(tok, packed.text + packed.response) == packed.n_tokens <= 1500
    longer = template.format_prompt(num_genes=100, num_cells=n + 1, **fields) + \
        template.format_response(cells=format_cells(pbmc_sentences[:n + 1]))
    assert count_tokens(tok, longer) > 1500
