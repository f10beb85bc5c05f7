"""Tiny tokenizer, model and texts for the contrastive tests (built in code, no network)."""

import os

from flax import nnx

from neobert_jax.config import ModernBertConfig
from neobert_jax.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from neobert_jax.hf import save_hf_dir
from neobert_jax.model import ModernBertForMaskedLM

TEXTS = [
    "Return the sum of a list of numbers.", "os.path.join(a, *p)", "Join two or more pathname components.",
    "shutil.copyfile(src, dst, *, follow_symlinks=True)", "Copy data from src to dst.", "x",
    "Split a string into words and return the list of them, dropping empty pieces on the way out.",
    "json.dumps(obj, *, skipkeys=False, ensure_ascii=True)", "Serialize obj to a JSON formatted str.",
]


def tiny_tokenizer_dir(root, texts=TEXTS, vocab_size: int = 400) -> str:
    corpus = os.path.join(root, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(texts * 3))
    out = os.path.join(root, "tokenizer")
    save_tokenizer(train_tokenizer([corpus], vocab_size=vocab_size), out)
    return out


def tiny_hf_dir(root, tokenizer_dir: str, seed: int = 0) -> str:
    """A random-init 2-layer, 32-wide ModernBERT saved as an HF dir with its tokenizer."""
    tokenizer = load_tokenizer(tokenizer_dir)
    config = ModernBertConfig(
        vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=2, local_attention=16, pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    out = os.path.join(root, "hf")
    save_hf_dir(ModernBertForMaskedLM(config, rngs=nnx.Rngs(seed)), out, tokenizer_dir=tokenizer_dir)
    return out
