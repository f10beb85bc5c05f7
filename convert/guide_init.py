"""python convert/guide_init.py --teacher HF_DIR --out OUT: GUIDE-initialize a student ModernBERT or NeoBERT.

The student has the teacher's architecture, read from its config.json as load_pretrained does.
"""

import argparse
import sys

from neobert_jax.fileio import check_absent
from neobert_jax.hf.paths import locate
from neobert_jax.guide import GuideError, guide_init, parse_layer_map
from neobert_jax.hf import read_hf_config, read_hf_state_dict, save_checkpoint_dir, save_hf_dir, save_neobert_dir
from neobert_jax.neobert_config import NeoBertConfig, is_neobert_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--teacher", required=True, help="transformers ModernBERT dir (4.x or 5.x, MLM or bare) or NeoBERT dir "
                   "(model_type 'neobert'; release or fork layout)")
    p.add_argument("--out", required=True, help="student HF dir to write")
    p.add_argument("--checkpoint", help="also write a project (orbax) checkpoint dir here")
    p.add_argument("--hidden-size", type=int, default=384, help="the student's width (default %(default)s)")
    p.add_argument("--num-layers", type=int, default=12, help="the student's depth (default %(default)s)")
    p.add_argument("--num-heads", type=int, default=6, help="the student's attention heads (default %(default)s)")
    p.add_argument("--intermediate-size", type=int, default=768, help="the student's intermediate_size: ModernBERT's GeGLU width; a NeoBERT's "
                   "SwiGLU width is 2/3 of it, rounded up to a multiple of 8 (default %(default)s)")
    p.add_argument("--vocab-size", type=int, default=0, help="must equal the teacher's (0: the teacher's)")
    p.add_argument("--max-position-embeddings", type=int, default=1024,
                   help="the student's (the users' student config: 1024; sentence-transformers truncates there; default %(default)s)")
    p.add_argument("--selection", choices=("prefix", "uniform"), default="prefix",
                   help="which heads/neurons to keep: the first ones (users' script) or evenly spread (paper); default %(default)s")
    p.add_argument("--layers", default="0", help="teacher:student layer pairs, e.g. '0:0,6:1' (default '%(default)s': layer 0 to layer 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the default init of the other tensors (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace --out (and --checkpoint) if they exist")
    args = p.parse_args(argv)
    try:
        if args.max_position_embeddings <= 0:
            raise ValueError(f"--max-position-embeddings {args.max_position_embeddings}: must be positive")
        if not args.overwrite:
            for out in filter(None, (args.out, args.checkpoint)):
                check_absent(out)
        files = locate(args.teacher)
        print(f"teacher {args.teacher}: {files.describe()}")
        neobert = is_neobert_config(files.config)
        teacher = NeoBertConfig.from_json_file(files.config) if neobert else read_hf_config(args.teacher)
        student = teacher.replace(
            hidden_size=args.hidden_size, num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
            intermediate_size=args.intermediate_size, vocab_size=args.vocab_size or teacher.vocab_size,
            **{"max_length" if neobert else "max_position_embeddings": args.max_position_embeddings},
        )
        model, explained, guided = guide_init(read_hf_state_dict(args.teacher), teacher, student,
                                              layer_map=parse_layer_map(args.layers), selection=args.selection,
                                              seed=args.seed)
        tokenizer_dir = files.tokenizer
        save = save_neobert_dir if neobert else save_hf_dir
        save(model, args.out, tokenizer_dir=tokenizer_dir, overwrite=args.overwrite)
        if args.checkpoint:
            save_checkpoint_dir(model, args.checkpoint, tokenizer_dir=tokenizer_dir, overwrite=args.overwrite)
    except (OSError, ValueError, GuideError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"PCA {teacher.hidden_size} -> {student.hidden_size}: explained variance {explained:.4f}")
    print(f"GUIDE-initialized {len(guided)} tensors ({args.selection} selection): {', '.join(guided)}")
    print(f"all other tensors keep the default {'NeoBERT' if neobert else 'ModernBERT'} init")
    print(f"wrote {args.out}" + (f" and {args.checkpoint}" if args.checkpoint else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
