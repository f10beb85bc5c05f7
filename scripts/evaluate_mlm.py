"""Scores an exported masked LM on held-out paragraphs: the held-out MLM loss at a fixed masking seed
(the evaluator every recipe comparison uses, neobert_jax/hf/mlm_eval.py) and the pseudo-perplexity
(each token masked in turn; no seed).

    python scripts/evaluate_mlm.py runs/student/hf --heldout heldout.txt [--max-paragraphs 200] [--json out.json]

Any HF ModernBERT MLM folder works (ours, the users' HF Trainer output, a hub download saved locally);
its own tokenizer is used. The pseudo-perplexity costs one forward pass per token: --max-paragraphs
bounds it on large held-out files (the first N non-empty lines)."""

import argparse
import json
import os
import sys

from neobert_jax.hf.mlm_eval import heldout_mlm_loss, pseudo_perplexity, read_paragraphs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an HF masked-LM folder with its tokenizer")
    p.add_argument("--heldout", required=True, help="a text file, one paragraph per line")
    p.add_argument("--max-paragraphs", type=int, default=0, help="score only the first N paragraphs (0: all)")
    p.add_argument("--mlm-probability", type=float, default=0.3, help="masking rate of the MLM loss (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="masking seed of the MLM loss (default 0)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    try:
        if not os.path.isfile(os.path.join(args.model, "config.json")):
            raise FileNotFoundError(f"{args.model}: no config.json (an HF model folder is expected)")
        paragraphs = read_paragraphs(args.heldout)
        if args.max_paragraphs > 0:
            paragraphs = paragraphs[:args.max_paragraphs]
        if not paragraphs:
            raise ValueError(f"{args.heldout}: no non-empty line")
        loss = heldout_mlm_loss(args.model, paragraphs, mlm_probability=args.mlm_probability, seed=args.seed)
        pseudo = pseudo_perplexity(args.model, args.model, paragraphs)
    except (OSError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(f"{args.model} on {args.heldout}: {loss['paragraphs']} paragraphs")
    print(f"held-out MLM loss {loss['loss']:.4f} (perplexity {loss['perplexity']:.2f}; {loss['masked_tokens']} tokens "
          f"masked at {args.mlm_probability}, seed {args.seed})")
    print(f"pseudo-perplexity {pseudo['pseudo_perplexity']:.2f} (mean NLL {pseudo['pseudo_nll']:.4f} over "
          f"{pseudo['tokens']} tokens, each masked alone)")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"model": args.model, "heldout": args.heldout, "mlm": loss, "pseudo": pseudo}, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
