r"""A random-init HF ModernBERT dir of another dir's shape and tokenizer: the baseline a pretrained
export is compared against (scripts/glue.py, docs/classification.md).

    python scripts/random_init.py runs/student/mlm/hf runs/random-student/hf [--seed 0] [--overwrite]

The model is the project's ModernBertForMaskedLM initialized as a pretraining run starts (its
config.json's initializer_range and cutoff), saved with the source's config and tokenizer files.
"""

import argparse

from flax import nnx

from neobert_jax.hf import save_hf_dir
from neobert_jax.hf.io import read_hf_config
from neobert_jax.model import ModernBertForMaskedLM


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="an HF ModernBERT dir: its config.json and tokenizer files are used")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    model = ModernBertForMaskedLM(read_hf_config(args.source), rngs=nnx.Rngs(args.seed))
    save_hf_dir(model, args.out_dir, tokenizer_dir=args.source, overwrite=args.overwrite)
    print(f"{args.out_dir}: random-init ModernBERT of {args.source}'s shape (seed {args.seed})")


if __name__ == "__main__":
    main()
