"""The run dir's own bookkeeping, shared by the pretraining and contrastive trainers.

- `RunDirLock`: one run per output_dir. Two runs on one dir mix checkpoints and metrics, so
  the second is refused with a line naming the holder. The lock is an `fcntl.flock` on
  `output_dir/.lock`: the kernel drops it when the holder dies (kill -9 included), so a dead
  run never keeps it; the file's pid/host only name the holder in the message.
- The run's tokenizer is written only after everything else was validated, and never
  disagrees with the one the model trains with (`check_run_tokenizer`).
- A resume must not silently change what the checkpoints were trained with (`check_resume`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time

import jax
import numpy as np

from neobert_jax.data.tokenizer import load_tokenizer, save_tokenizer, vocab_fingerprint

TOKENIZER_DIR = "tokenizer"
LOCK_FILE = ".lock"
RUN_CONFIG = "run_config.json"


class RunDirInUse(OSError):
    """Another live run holds the output dir."""


class RunDirLock:
    """`with RunDirLock(output_dir):` holds output_dir for this process (process 0 of a
    multi-host run takes it for all) and removes temp dirs that killed runs left. A dir the
    lock created is removed again if the run leaves it empty, so a run refused for bad input
    leaves no trace."""

    def __init__(self, output_dir: str, enabled: bool = True):
        self.output_dir = os.path.abspath(output_dir)
        self.path = os.path.join(self.output_dir, LOCK_FILE)
        self.enabled = enabled
        self._fd = None
        self._created_dir = False

    def __enter__(self) -> "RunDirLock":
        if not self.enabled:
            return self
        self._created_dir = not os.path.exists(self.output_dir)
        os.makedirs(self.output_dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                self._remove_created_dir()
                raise RunDirInUse(f"output_dir {self.output_dir} is in use by {holder} (lock {self.path}); "
                                   "wait for that run to end or use another output_dir") from None
            try:  # the holder we waited on may have unlinked the file: lock the one on disk
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        self._remove_stale_temp_dirs()
        return self

    def _remove_stale_temp_dirs(self) -> None:
        """Temp dirs of `atomic_dir` (e.g. `.hf.tmp-*` of an export killed midway): with the lock held
        no other run can be writing them."""
        for name in os.listdir(self.output_dir):
            path = os.path.join(self.output_dir, name)
            if name.startswith(".") and ".tmp-" in name and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
        self._remove_created_dir()

    def _remove_created_dir(self) -> None:
        if self._created_dir and os.path.isdir(self.output_dir) and not os.listdir(self.output_dir):
            os.rmdir(self.output_dir)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on host {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another run"


def share_tokenizer(tokenizer):
    """Process 0's tokenizer on every process (sent as tokenizer.json), so only process 0 trains
    one: processes training their own raced to write the same cache on shared storage."""
    if jax.process_count() == 1:
        return tokenizer
    from jax.experimental import multihost_utils

    from neobert_jax.data.tokenizer import wrap_backend

    text = tokenizer.backend_tokenizer.to_str().encode() if jax.process_index() == 0 else b""
    size = int(multihost_utils.broadcast_one_to_all(np.int64(len(text))))
    data = np.frombuffer(text, np.uint8) if text else np.zeros(size, np.uint8)
    data = np.asarray(multihost_utils.broadcast_one_to_all(data))
    return tokenizer if jax.process_index() == 0 else wrap_backend(data.tobytes().decode())


def has_checkpoints(output_dir: str) -> bool:
    steps_dir = os.path.join(output_dir, "checkpoints")
    return os.path.isdir(steps_dir) and any(name.isdigit() for name in os.listdir(steps_dir))


def check_run_tokenizer(tokenizer, output_dir: str, resuming: bool) -> bool:
    """Whether output_dir/tokenizer must be (re)written with `tokenizer`.

    A different one there is stale (a failed or earlier run left it) and is replaced, unless the
    checkpoints being resumed were trained with it: then the run is refused.
    """
    run_copy = os.path.join(output_dir, TOKENIZER_DIR)
    if not os.path.isdir(run_copy):
        return True
    if vocab_fingerprint(load_tokenizer(run_copy)) == vocab_fingerprint(tokenizer):
        return False
    if resuming:
        raise ValueError(f"{run_copy}: the checkpoints in {output_dir} were trained with this tokenizer, not the one "
                         "this run would use; pass config.tokenizer=" + run_copy + " to resume, or "
                         "config.resume=False to start over")
    return True


def check_resume(resolved, output_dir: str) -> None:
    """Refuses a resume whose train.batch_size (resolved) differs from the checkpoints' run: the
    data iterator's position and order depend on it; or whose classifier labels differ: the
    checkpoints' outputs would take other names."""
    batch_size = resolved.batch_size
    try:
        with open(os.path.join(output_dir, RUN_CONFIG)) as f:
            recorded = json.load(f)
        before = recorded["train"]["batch_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # written by every run; a run dir without it predates the check
    labels = (recorded.get("resolved") or {}).get("labels")
    if resolved.labels is not None and labels is not None and labels != resolved.labels:
        raise ValueError(f"the labels are {resolved.labels} but the checkpoints in {output_dir} were trained with "
                         f"{labels} (in that order): set data.labels to that list to resume, or start a new output_dir")
    if before != batch_size:
        raise ValueError(f"config.train.batch_size={batch_size} but the checkpoints in {output_dir} "
                         f"were trained with {before}: resuming would change the data order; use {before}, or "
                         "init_from=<that run dir> with a new output_dir to continue from its weights")


def write_run_files(config, resolved, output_dir: str, model_config, tokenizer, note: dict | None,
                    write_tokenizer: bool) -> None:
    """config.json, run_config.json (`resolved.run_config`) and (when `write_tokenizer`) tokenizer/,
    by process 0 only."""
    if jax.process_index() != 0:
        return
    if write_tokenizer:
        save_tokenizer(tokenizer, os.path.join(output_dir, TOKENIZER_DIR), note, replace=True)
    model_config.save_json(os.path.join(output_dir, "config.json"))
    with open(os.path.join(output_dir, RUN_CONFIG), "w") as f:
        f.write(resolved.run_config(config))
