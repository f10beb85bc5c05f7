"""python convert/flax_to_torch.py CKPT_DIR HF_OUT_DIR [--overwrite]: project checkpoint -> HF safetensors dir."""

import sys

from neobert_jax.hf.convert import flax_to_torch, main

if __name__ == "__main__":
    sys.exit(main(flax_to_torch, __doc__))
