"""python convert/flax_to_torch.py CKPT_DIR HF_OUT_DIR [--overwrite]: project checkpoint -> HF safetensors dir,
with a README.md model card written from the run's records when CKPT_DIR is a run dir or one of its checkpoints."""

import os
import sys

from neobert_jax.hf.convert import flax_to_torch, main
from neobert_jax.hf.paths import CHECKPOINTS, locate
from neobert_jax.runtime.model_card import write_model_card


def convert_with_card(src: str, out: str, overwrite: bool = False) -> list[str]:
    newly_initialized = flax_to_torch(src, out, overwrite=overwrite)
    root, kind = os.path.abspath(src), locate(src).kind
    if kind == "checkpoint step dir":
        write_model_card(out, os.path.dirname(os.path.dirname(root)), int(os.path.basename(root)))
    elif kind == "run dir":
        steps = [int(d) for d in os.listdir(os.path.join(root, CHECKPOINTS)) if d.isdigit()]
        write_model_card(out, root, max(steps))
    else:
        write_model_card(out, None)
    return newly_initialized


if __name__ == "__main__":
    sys.exit(main(convert_with_card, __doc__))
