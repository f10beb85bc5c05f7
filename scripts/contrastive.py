"""Contrastive fine-tuning: `python scripts/contrastive.py --config configs/contrastive.py [--config.a.b=value ...]`.

Rerunning with the same output_dir resumes from its latest checkpoint (--config.resume=False
starts over). SIGTERM/SIGINT save a checkpoint and exit 0. Writes output_dir/st.
Multi-host runs start the same command on every host, as scripts/pretrain.py (docs/scaling.md).
"""

from neobert_jax.runtime import early_signals

early_signals.install()

from neobert_jax.contrastive.task import train_contrastive  # noqa: E402
from neobert_jax.runtime.cli import run  # noqa: E402

if __name__ == "__main__":
    run(train_contrastive, "configs/contrastive.py", __doc__)
