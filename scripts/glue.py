r"""GLUE-style evaluation of one model on a folder of tasks (docs/classification.md).

    python scripts/glue.py --tasks-dir glue_data --init-from runs/student/hf --output-dir runs/glue \
        [--tasks CoLA,SST-2] [--seeds 0,1,2] [--set train.seq_len=128 | --config.train.seq_len=128 ...]
    python scripts/glue.py --make-builtin tasks/builtin   # stdlib-family, stdlib-pair, py-identifiers

Every task is a classification run (configs/classify.py) in output_dir/<task>/seed<N>; a failed task
is reported in the table and the exit status is 1; rerunning resumes or reports what finished.
"""

import sys

from neobert_jax.runtime import early_signals

early_signals.install()

from neobert_jax.glue import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
