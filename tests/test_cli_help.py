"""`--help` of the documented commands: exit 0, their own options, and nothing written."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _help(tmp_path, script, *args):
    """Runs `script --help` from an empty dir; -> (exit code, output, what the dir holds after)."""
    run = subprocess.run([sys.executable, os.path.join(REPO, script), *args, "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    return run.returncode, run.stdout + run.stderr, sorted(os.listdir(tmp_path))


@pytest.mark.parametrize("script,config,keys", [
    ("scripts/pretrain.py", "configs/student.py", ["  train:", "    learning_rate: 0.0008", "    mlm_probability: 0.3"]),
    ("scripts/contrastive.py", "configs/contrastive.py", ["  loss:", "    scale: 20.0", "  pooling:"]),
    ("scripts/finetune.py", "configs/classify.py", ["  classifier:", "    pooling: cls", "    text_pair_column: ''"]),
])
def test_config_scripts_show_their_keys_nested(tmp_path, script, config, keys):
    for args in ([], ["--config", os.path.join(REPO, config)]):  # the example config, or the one given
        code, out, left = _help(tmp_path, script, *args)
        assert code == 0 and left == [], out[-2000:]
        assert out.splitlines()[0].startswith(("MLM pretraining", "Contrastive fine-tuning", "Sequence classification")), out[:300]
        assert all(key in out.splitlines() for key in keys), out
        assert "--coordinator_address" in out and "absl" not in out  # its own flags, not other libraries'


def test_help_of_scripts_that_write_files_writes_nothing(tmp_path):
    code, out, left = _help(tmp_path, "scripts/info_corpus.py")
    assert code == 0 and left == [] and "usage:" in out, out
    code, out, left = _help(tmp_path, "convert/guide_init.py")
    assert code == 0 and left == [] and "the student's width (default 384)" in out, out
