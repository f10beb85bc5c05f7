"""Where a model's files are, for every path a command takes: one rule, no searching upwards.

A path is one of
- a model dir: an HF one (config.json, model.safetensors) or the project's (config.json, params/),
  the tokenizer files in it or in its tokenizer/;
- a run dir (a trainer's output_dir): config.json and tokenizer/ in it, the params of its latest
  checkpoint in checkpoints/<step>/params;
- a checkpoint step dir, <run>/checkpoints/<step>: params/ in it, config.json and tokenizer/ in
  the run dir it belongs to.
Walking up parent dirs could pick up another model's tokenizer; these three layouts cannot.
"""

from __future__ import annotations

import dataclasses
import os

from neobert_jax.hf.io import TOKENIZER_FILES

PARAMS = "params"
CHECKPOINTS = "checkpoints"
TOKENIZER = "tokenizer"


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    kind: str  # "model dir" | "run dir" | "checkpoint step dir"
    config: str | None  # config.json, None when there is none
    params: str | None  # the orbax params item; None: HF weights beside config.json
    tokenizer: str | None  # the folder holding the tokenizer files, None when there are none

    def describe(self) -> str:
        return (f"{self.kind}: config {self.config or 'none'}, weights {self.params or 'HF files beside it'}, "
                f"tokenizer {self.tokenizer or 'none'}")


def locate(path: str) -> ModelFiles:
    root = os.path.abspath(path)
    parent = os.path.dirname(root)
    if os.path.basename(parent) == CHECKPOINTS and os.path.basename(root).isdigit():
        run = os.path.dirname(parent)
        return ModelFiles("checkpoint step dir", _file(run, "config.json"), _dir(root, PARAMS), _tokenizer(run))
    if os.path.isdir(os.path.join(root, CHECKPOINTS)) and not os.path.isdir(os.path.join(root, PARAMS)):
        return ModelFiles("run dir", _file(root, "config.json"), _latest_params(root), _tokenizer(root))
    return ModelFiles("model dir", _file(root, "config.json"), _dir(root, PARAMS), _tokenizer(root))


def _file(folder: str, name: str) -> str | None:
    path = os.path.join(folder, name)
    return path if os.path.isfile(path) else None


def _dir(folder: str, name: str) -> str | None:
    path = os.path.join(folder, name)
    return path if os.path.isdir(path) else None


def _tokenizer(folder: str) -> str | None:
    for candidate in (folder, os.path.join(folder, TOKENIZER)):
        if any(os.path.isfile(os.path.join(candidate, name)) for name in TOKENIZER_FILES):
            return candidate
    return None


def _latest_params(run: str) -> str | None:
    """The params of the newest step that has them (a save killed midway leaves a step without)."""
    steps_dir = os.path.join(run, CHECKPOINTS)
    for step in sorted((int(s) for s in os.listdir(steps_dir) if s.isdigit()), reverse=True):
        params = _dir(os.path.join(steps_dir, str(step)), PARAMS)
        if params:
            return params
    return None
