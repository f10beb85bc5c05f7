"""Folders that appear complete or not at all: built under a temporary name, then renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_dir(out_dir: str, if_exists: str = "error") -> Iterator[str]:
    """Yields a temp folder beside `out_dir` that becomes `out_dir` when the block completes.

    if_exists: "error", "replace" (the old folder is moved aside, deleted only after the rename),
    or "keep" (another process finished first: its folder stays and ours is dropped).
    An existing empty folder counts as absent.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)
    if os.path.exists(out_dir) and if_exists == "error":
        raise FileExistsError(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=os.path.dirname(out_dir))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_dir, 0o777 & ~umask)  # mkdtemp's 0700 would hide the result from other users
    try:
        yield tmp_dir
        if not os.path.exists(out_dir):
            os.rename(tmp_dir, out_dir)
        elif if_exists == "replace":
            old_dir = f"{tmp_dir}.old"
            os.rename(out_dir, old_dir)
            os.rename(tmp_dir, out_dir)
            shutil.rmtree(old_dir)
        elif if_exists == "error":
            raise FileExistsError(f"{out_dir}: appeared while it was being written; not replaced")
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
