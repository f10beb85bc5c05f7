"""The two conversion commands; `convert/*.py` are thin CLIs over these."""

from __future__ import annotations

import argparse
import sys

from neobert_jax.hf.checkpoint import load_pretrained, save_checkpoint_dir
from neobert_jax.hf.paths import locate
from neobert_jax.runtime.model_init import architecture_of


def torch_to_flax(hf_dir: str, out_dir: str, overwrite: bool = False) -> list[str]:
    """HF ModernBERT or NeoBERT dir -> project checkpoint dir; returns the newly initialized tensor names."""
    model, newly_initialized = load_pretrained(hf_dir)
    save_checkpoint_dir(model, out_dir, tokenizer_dir=locate(hf_dir).tokenizer, overwrite=overwrite)
    return newly_initialized


def flax_to_torch(ckpt: str, out_dir: str, overwrite: bool = False) -> list[str]:
    """Project checkpoint (model dir, run dir or step dir) -> HF dir with model.safetensors, in the
    architecture's format (a NeoBERT's with its remote code, as a run's export)."""
    model, newly_initialized = load_pretrained(ckpt)
    save_hf = architecture_of(model.config).save_hf
    save_hf(model, out_dir, tokenizer_dir=locate(ckpt).tokenizer, overwrite=overwrite)
    return newly_initialized


def main(convert, description: str, argv=None) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output dir")
    args = parser.parse_args(argv)
    try:
        newly_initialized = convert(args.src, args.out, overwrite=args.overwrite)
    except (OSError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if newly_initialized:
        print(f"newly initialized (not in {args.src}): {', '.join(newly_initialized)}")
    print(f"read {args.src}, a {locate(args.src).describe()}")
    print(f"wrote {args.out}")
    return 0
