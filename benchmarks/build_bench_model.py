"""Build the ~20M-parameter GPT-NeoX used by the CPU inference benchmark (random weights).

Both C2S Studio and the reference package load this one folder, so they run the same weights
and the same tokenizer. It is written with ``save_pretrained`` (safetensors) next to a
``c2s.json`` card listing the benchmarked tasks, into /tmp by default (never committed).

Tokenizer: a byte-pair tokenizer (8,192 tokens) trained here with ``tokenizers`` on real cell
sentences (top 100 genes of every Kang PBMC cell), every gene symbol of that dataset, our prompt
templates and the printable ASCII characters (so any prompt wording encodes without unknowns);
frequent genes become one token, rare ones a few pieces, as with a real LLM tokenizer.

Model: Pythia-style GPT-NeoX, hidden 384, 8 layers, 6 heads, MLP 1536, 2,048 positions:
14.2M non-embedding parameters plus 2 x 8,192 x 384 for the input embedding and the untied
output layer (20.5M in all).

Fixed answer lengths: a random model stops at random places, which would make the two sides
generate different numbers of tokens (ours stops at the template's ". " / ".\\n", the reference
only at EOS). So the weights are edited to make EOS and every token holding "." or a newline
impossible: hidden unit 0 after the final layer norm is made the constant 1 (weight 0, bias 1)
and the output layer gives those tokens -1e4 on that unit (every other token 0 on it). Both
packages then generate exactly ``max_new_tokens`` tokens per answer, so cells/s compare equal
work; the unit-0 edit changes no other token's logits.

Usage::

    python benchmarks/build_bench_model.py [--out /tmp/c2s_bench_gpt_neox_20m] [--data KANG.h5ad]
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("/tmp/c2s_bench_gpt_neox_20m")
KANG = REPO.parent / "shared" / "data" / "kang_pbmc_ifnb" / "kang_pbmc_ifnb.h5ad"
VOCAB_SIZE = 8192
CORPUS_TOP_K = 100
BANNED_LOGIT = -1.0e4
# The engine, and the test suite's tokenizer trainer and template corpus (tests/tiny_models.py).
sys.path[:0] = [str(REPO), str(REPO / "tests")]
CARD = {
    "tasks": ["cell_type_prediction", "cell_type_generation", "embedding"],
    "top_k": 100,
    "organisms": ["Homo sapiens"],
    "context_length": 2048,
    "prompt_family": "c2s",
    "description": "Random-weight ~20M GPT-NeoX for the CPU inference benchmark (no training).",
}


def tokenizer_corpus(data: Path) -> list[str]:
    """Cell sentences and gene symbols of ``data`` plus every prompt wording and ASCII."""
    import anndata as ad
    from tiny_models import template_corpus

    from c2s_engine.pp import prepare
    from c2s_engine.sentences import compute_sentences, get_sentences

    adata = ad.read_h5ad(data)
    prepare(adata)
    compute_sentences(adata, top_k=CORPUS_TOP_K)
    labels = sorted({str(v) for v in adata.obs.get("cell_type", [])})
    return [
        *get_sentences(adata),
        " ".join(adata.var_names),
        *template_corpus(),
        " ".join(labels),
        " ".join(string.printable.split()),
        " ".join(str(i) for i in range(1001)),
    ]


def banned_token_ids(tokenizer) -> list[int]:
    """EOS and every token whose text holds a period or a newline (answer enders)."""
    banned = {tokenizer.eos_token_id}
    for token, index in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if "." in text or "\n" in text:
            banned.add(index)
    return sorted(banned)


def build(out: Path = DEFAULT_OUT, data: Path = KANG, seed: int = 0) -> Path:
    """Train the tokenizer, build the random model, make answers fixed-length and save it."""
    import torch
    from tiny_models import train_tiny_tokenizer
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    tokenizer = train_tiny_tokenizer(
        tokenizer_corpus(data), vocab_size=VOCAB_SIZE, model="bpe", add_bos=False
    )
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=384,
        num_hidden_layers=8,
        num_attention_heads=6,
        intermediate_size=1536,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    banned = banned_token_ids(tokenizer)
    with torch.no_grad():
        norm = model.gpt_neox.final_layer_norm
        norm.weight[0], norm.bias[0] = 0.0, 1.0
        output = model.get_output_embeddings()
        output.weight[:, 0] = 0.0
        output.weight[banned, 0] = BANNED_LOGIT
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    n_embedding = (
        model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    )
    card = {**CARD, "n_parameters": n_params}
    (out / "c2s.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    print(
        f"saved {out}: {n_params / 1e6:.1f}M parameters "
        f"({(n_params - n_embedding) / 1e6:.1f}M non-embedding), vocab {len(tokenizer)}, "
        f"{len(banned)} answer-ending tokens made impossible"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--data", type=Path, default=KANG, help="h5ad whose cells and genes train the tokenizer"
    )
    args = parser.parse_args(argv)
    build(args.out, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
