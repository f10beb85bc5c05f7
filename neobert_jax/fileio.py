"""Folders that appear complete or not at all: built under a temporary name, then renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


def check_absent(out_dir: str) -> None:
    """Raises FileExistsError when `out_dir` exists and is not an empty folder: for commands that
    write several folders, so a refused second one is known before the first is written."""
    if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        raise FileExistsError(f"{os.path.abspath(out_dir)}: exists and is not empty (pass --overwrite to replace it)")


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
    if if_exists == "error":
        check_absent(out_dir)
    try:
        os.makedirs(os.path.dirname(out_dir), exist_ok=True)
        tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=os.path.dirname(out_dir))
    except OSError as e:  # e.g. a read-only mount: named by the path the user gave, not the temp folder's
        raise OSError(e.errno, e.strerror, out_dir) from None
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
    except OSError as e:  # a failed write (a full disk) names the file as it would be in out_dir
        if not (isinstance(e.filename, str) and e.filename.startswith(tmp_dir)):
            raise
        raise OSError(e.errno, e.strerror, out_dir + e.filename[len(tmp_dir):]) from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
