"""The one held-out MLM evaluator for every model, whoever trained it (ours, the users' HF Trainer, ...).

    heldout = prepare_heldout(tokenizer, paragraphs)           # masked inputs, model-independent
    mlm_loss("runs/student/hf", heldout)                       # -> {"loss", "perplexity", "masked_tokens", "paragraphs"}
    heldout_mlm_loss("runs/student/hf", "heldout.txt")         # both at once, tokenizer from the model dir
    pseudo_perplexity("runs/student/hf", tokenizer, paragraphs) # every token masked in turn (no seed)

Why this way: training losses are not comparable across trainers (ours packs rows, the HF Trainer pads
one paragraph per row, and their masks differ), so every model is scored by the same torch code on the
same masked inputs. Each paragraph is run alone, unpadded, as the users embed paragraphs; paragraphs of
exactly equal length are batched together, which computes the same thing. The forward runs in float32
with TF32 off, so the score measures the weights, not the evaluation's arithmetic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = -100


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Masked held-out paragraphs: `input_ids[i]` (masked) and `labels[i]` (original id at the masked
    positions, IGNORE_INDEX elsewhere), one int64 array per paragraph, unpadded."""

    input_ids: list[np.ndarray]
    labels: list[np.ndarray]
    mlm_probability: float
    seed: int
    max_length: int

    @property
    def paragraphs(self) -> int:
        return len(self.input_ids)

    @property
    def masked_tokens(self) -> int:
        return int(sum((labels != IGNORE_INDEX).sum() for labels in self.labels))


def read_paragraphs(path: str) -> list[str]:
    """The non-empty lines of a text file, one paragraph each (the users' corpus format)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _load_tokenizer(tokenizer):
    """A transformers tokenizer: the evaluator tokenizes as the users' script does."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    from neobert_jax.data.tokenizer import RunTokenizer

    return tokenizer.to_transformers() if isinstance(tokenizer, RunTokenizer) else tokenizer


def prepare_heldout(tokenizer, paragraphs: Sequence[str] | str, *, mlm_probability: float = 0.3, seed: int = 0,
                    max_length: int = 512) -> HeldOut:
    """Tokenizes and masks the paragraphs, the same way for every model.

    `tokenizer`: a transformers tokenizer or its folder; `paragraphs`: strings, or a text file's path
    (its non-empty lines). Each paragraph is tokenized alone as the users' script does
    (`truncation=True, max_length=max_length`, special tokens added). Paragraphs with no non-special
    token are skipped. One `numpy.random.default_rng(seed)` generator serves all paragraphs, in their
    order; for a paragraph with n non-special tokens, k = max(1, round(mlm_probability * n)) (Python's
    round, half to even), the draws are, in this order:
      1. `rng.choice(n, size=k, replace=False)`: which non-special tokens (by rank among them) are masked;
      2. `rng.random(k)`: u < 0.8 -> [MASK], 0.8 <= u < 0.9 -> a random id, u >= 0.9 -> left unchanged;
      3. `rng.integers(0, len(tokenizer), size=k)`: the random ids (drawn for all k, used where 2. says so).
    """
    tokenizer = _load_tokenizer(tokenizer)
    if isinstance(paragraphs, (str, os.PathLike)):
        paragraphs = read_paragraphs(str(paragraphs))
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token")
    encoded = tokenizer(list(paragraphs), truncation=True, max_length=max_length, return_special_tokens_mask=True,
                        return_token_type_ids=False)
    rng = np.random.default_rng(seed)
    vocab = len(tokenizer)
    inputs, labels = [], []
    for ids, special in zip(encoded["input_ids"], encoded["special_tokens_mask"]):
        ids = np.asarray(ids, dtype=np.int64)
        candidates = np.flatnonzero(np.asarray(special) == 0)
        n = len(candidates)
        if n == 0:
            continue
        k = max(1, round(mlm_probability * n))
        positions = candidates[rng.choice(n, size=k, replace=False)]
        u = rng.random(k)
        random_ids = rng.integers(0, vocab, size=k)
        label = np.full_like(ids, IGNORE_INDEX)
        label[positions] = ids[positions]
        masked = ids.copy()
        masked[positions] = np.where(u < 0.8, tokenizer.mask_token_id, np.where(u < 0.9, random_ids, ids[positions]))
        inputs.append(masked)
        labels.append(label)
    if not inputs:
        raise ValueError("no held-out paragraph has a token to mask")
    return HeldOut(inputs, labels, mlm_probability, seed, max_length)


@contextlib.contextmanager
def _full_float32():
    """Plain float32 matmuls and convolutions (no TF32) for the duration, restored afterwards."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def _batches(heldout: HeldOut, batch_tokens: int):
    """Index lists of paragraphs of one exact length, each at most batch_tokens tokens (>= 1 paragraph)."""
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(heldout.input_ids):
        by_length.setdefault(len(ids), []).append(i)
    for length, indices in sorted(by_length.items()):
        rows = max(1, batch_tokens // length)
        for start in range(0, len(indices), rows):
            yield indices[start:start + rows]


def mlm_loss(model_dir_or_torch_model, heldout: HeldOut, *, device=None, batch_tokens: int = 8192) -> dict:
    """Token-weighted mean cross-entropy of the model over all masked tokens of `heldout`.

    `model_dir_or_torch_model`: an HF model folder (loaded with `AutoModelForMaskedLM.from_pretrained` in
    float32) or a torch masked-LM module (moved to `device` in float32 and put in eval mode). `device`
    defaults to cuda when available. `batch_tokens` only bounds memory: the loss does not depend on it.
    -> dict(loss, perplexity, masked_tokens, paragraphs).
    """
    import torch

    model, device = _torch_model(model_dir_or_torch_model, device)
    nll, count = 0.0, 0
    with _full_float32(), torch.no_grad():
        for indices in _batches(heldout, batch_tokens):
            ids = torch.from_numpy(np.stack([heldout.input_ids[i] for i in indices])).to(device)
            labels = torch.from_numpy(np.stack([heldout.labels[i] for i in indices])).to(device)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            picked = labels != IGNORE_INDEX
            nll += torch.nn.functional.cross_entropy(logits[picked].float(), labels[picked],
                                                     reduction="sum").item()
            count += int(picked.sum())
    loss = nll / count
    return dict(loss=loss, perplexity=math.exp(loss) if loss < 700 else math.inf, masked_tokens=count,
                paragraphs=heldout.paragraphs)


def _torch_model(model, device):
    """-> (the masked LM in float32 eval mode on `device`, the device); `model` may be its HF folder."""
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModelForMaskedLM

        if not os.path.isdir(model):
            raise FileNotFoundError(f"{model}: no such model directory")
        model = AutoModelForMaskedLM.from_pretrained(str(model), dtype=torch.float32, local_files_only=True)
    return model.to(device=device, dtype=torch.float32).eval(), device


def pseudo_perplexity(model_dir_or_torch_model, tokenizer, paragraphs: Sequence[str] | str, *, max_length: int = 512,
                      device=None, batch_tokens: int = 8192) -> dict:
    """Pseudo-perplexity (Salazar et al., 2020, "Masked Language Model Scoring"): each non-special token
    of each paragraph masked alone, in turn; exp of the mean negative log-likelihood of the original
    tokens. Needs no masking seed, so it ranks models without the sampling noise of `mlm_loss`, at one
    forward pass per token. -> dict(pseudo_perplexity, pseudo_nll, tokens, paragraphs)."""
    import torch

    tokenizer = _load_tokenizer(tokenizer)
    if isinstance(paragraphs, (str, os.PathLike)):
        paragraphs = read_paragraphs(str(paragraphs))
    model, device = _torch_model(model_dir_or_torch_model, device)
    encoded = tokenizer(list(paragraphs), truncation=True, max_length=max_length, return_special_tokens_mask=True,
                        return_token_type_ids=False)
    nll, count, scored = 0.0, 0, 0
    with _full_float32(), torch.no_grad():
        for ids, special in zip(encoded["input_ids"], encoded["special_tokens_mask"]):
            positions = np.flatnonzero(np.asarray(special) == 0)
            scored += bool(len(positions))
            rows = max(1, batch_tokens // len(ids))
            for start in range(0, len(positions), rows):
                masked_at = torch.from_numpy(positions[start:start + rows]).to(device)
                batch = torch.tensor(ids, device=device).repeat(len(masked_at), 1)
                original = batch[0, masked_at]
                batch[torch.arange(len(masked_at), device=device), masked_at] = tokenizer.mask_token_id
                logits = model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits
                picked = logits[torch.arange(len(masked_at), device=device), masked_at].float()
                nll += torch.nn.functional.cross_entropy(picked, original, reduction="sum").item()
                count += len(masked_at)
    if count == 0:
        raise ValueError("no paragraph has a token to score")
    mean = nll / count
    return dict(pseudo_perplexity=math.exp(mean) if mean < 700 else math.inf, pseudo_nll=mean, tokens=count,
                paragraphs=scored)


def heldout_mlm_loss(model_dir: str, paragraphs: Sequence[str] | str, tokenizer=None, **kw) -> dict:
    """prepare_heldout + mlm_loss; the tokenizer defaults to the one saved in `model_dir`. Keyword
    arguments go to whichever of the two takes them."""
    prepare_keys = {"mlm_probability", "seed", "max_length"}
    heldout = prepare_heldout(_load_tokenizer(tokenizer or model_dir), paragraphs,
                              **{k: v for k, v in kw.items() if k in prepare_keys})
    return mlm_loss(model_dir, heldout, **{k: v for k, v in kw.items() if k not in prepare_keys})
