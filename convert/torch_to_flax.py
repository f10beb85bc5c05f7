"""python convert/torch_to_flax.py HF_DIR OUT_DIR [--overwrite]: HF ModernBERT -> project checkpoint."""

import sys

from neobert_jax.hf.convert import main, torch_to_flax

if __name__ == "__main__":
    sys.exit(main(torch_to_flax, __doc__))
