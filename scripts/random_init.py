r"""A random-init HF dir of another model's family, shape and tokenizer: the baseline a pretrained
export is compared against (scripts/glue.py, docs/classification.md).

    python scripts/random_init.py runs/student/mlm/hf runs/random-student/hf [--seed 0] [--overwrite]

The family (ModernBERT or NeoBERT) is the source config.json's. The model is the project's
masked LM of that family initialized as a pretraining run starts (its config's init ranges), saved
by the family's HF writer with the source's config and tokenizer files.
"""

import argparse
import sys

from flax import nnx

from neobert_jax.hf import locate, read_model_config
from neobert_jax.runtime.model_init import architecture_of


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a model dir (HF or project, either family): its config.json and tokenizer files")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        config = read_model_config(args.source)
    except (OSError, ValueError) as e:
        sys.exit(f"error: source: {e}")
    arch = architecture_of(config)
    model = arch.model_class(config, rngs=nnx.Rngs(args.seed))
    try:
        arch.save_hf(model, args.out_dir, tokenizer_dir=locate(args.source).tokenizer, overwrite=args.overwrite)
    except OSError as e:
        sys.exit(f"error: out_dir: {e}")
    print(f"{args.out_dir}: random-init {arch.name} of {args.source}'s shape (seed {args.seed})")


if __name__ == "__main__":
    main()
