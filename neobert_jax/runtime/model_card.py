"""The README.md model card of an exported folder (HF or sentence-transformers), written from the
run's own records: `run_config.json` (the config and what the run resolved), `run_summary.json`
(what the run did: steps, tokens, schedule, losses, evaluations), `loss.png`, and the export's
`config.json`. Nothing in a card is typed by hand, so it cannot drift from the run.

The YAML header carries the hub's fields (library_name, pipeline_tag, tags, base_model where the
starting model's own card names one); local file names are described in the text, not as hub
`datasets` ids.
"""

from __future__ import annotations

import json
import os
import shutil

from neobert_jax.runtime.reporting import LOSS_CURVE_FILE, SUMMARY_FILE as RUN_SUMMARY
from neobert_jax.runtime.run_dir import RUN_CONFIG

CARD_FILE = "README.md"

# what the export is, from its config.json architecture (or modules.json for sentence-transformers)
KINDS = {
    "ModernBertForMaskedLM": ("fill-mask", "transformers", "masked-language-model pretraining",
                              "AutoModelForMaskedLM"),
    "NeoBERTLMHead": ("fill-mask", "transformers", "masked-language-model pretraining", "AutoModelForMaskedLM"),
    "ModernBertForSequenceClassification": ("text-classification", "transformers", "sequence classification",
                                            "AutoModelForSequenceClassification"),
    "ModernBertForTokenClassification": ("token-classification", "transformers", "token classification",
                                         "AutoModelForTokenClassification"),
    "NeoBERTForSequenceClassification": ("text-classification", "transformers", "sequence classification",
                                         "AutoModelForSequenceClassification"),
    "NeoBERTForTokenClassification": ("token-classification", "transformers", "token classification",
                                      "AutoModelForTokenClassification"),
    "sentence-transformers": ("sentence-similarity", "sentence-transformers", "contrastive fine-tuning", None),
}


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _base_model(init_from: str) -> str | None:
    """The `base_model` the starting model's own card declares (so the chain to a hub model survives)."""
    for folder in (init_from, os.path.join(init_from, "hf")):
        try:
            with open(os.path.join(folder, CARD_FILE)) as f:
                text = f.read()
        except OSError:
            continue
        if text.startswith("---\n"):
            for line in text.split("\n---", 1)[0].splitlines():
                if line.startswith("base_model:") and line.split(":", 1)[1].strip():
                    return line.split(":", 1)[1].strip()
    return None


def _family(model_config: dict) -> tuple[str, bool]:
    """(the architecture's name, whether loading needs trust_remote_code): a NeoBERT export carries its
    modeling code (hf/neobert.py), which transformers runs only when asked to."""
    neobert = model_config.get("model_type") == "neobert"
    return ("NeoBERT", True) if neobert else ("ModernBERT", False)


def _kind(export_dir: str, model_config: dict) -> str:
    if os.path.isfile(os.path.join(export_dir, "modules.json")):
        return "sentence-transformers"
    archs = model_config.get("architectures") or ["ModernBertForMaskedLM"]
    return archs[0] if archs[0] in KINDS else "ModernBertForMaskedLM"


def _files(value) -> str:
    files = value if isinstance(value, list) else [f for f in str(value or "").split(",") if f]
    return ", ".join(f"`{f}`" for f in files) if files else ""


def _hf_dataset(hf: dict) -> str:
    if not hf.get("name"):
        return ""
    name = hf["name"] + (f"/{hf['config']}" if hf.get("config") else "")
    return (f"`{name}` split `{hf.get('split')}`" + (f" ({_files(hf['data_files'])})" if hf.get("data_files") else "")
            + (", streamed" if hf.get("streaming") else ""))


def _training_rows(run_config: dict, summary: dict | None, model_config: dict) -> list[tuple[str, str]]:
    t, data = run_config.get("train", {}), run_config.get("data", {})
    resolved = run_config.get("resolved") or {}
    rows = [("started from", f"`{run_config['init_from']}`" if run_config.get("init_from") else "random initialization"),
            ("training data", _files(data.get("train_files")) or _files(data.get("preprocessed_dir"))
             or _hf_dataset(data.get("hf_dataset") or {})
             or "the project's built-in corpus (Python's standard-library documentation)")]
    if data.get("eval_files"):
        rows.append(("evaluation data", _files(data["eval_files"])))
    elif data.get("eval_samples"):
        rows.append(("evaluation data", f"{data['eval_samples']} documents held out of the training data"))
    width = model_config.get("hidden_size")
    positions = model_config.get("max_position_embeddings") or model_config.get("max_length")  # NeoBERT's name
    if positions and all(model_config.get(k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")):
        rows.append(("model", f"{_family(model_config)[0]}, {model_config.get('num_hidden_layers')} layers x "
                              f"{width} wide, vocabulary {model_config.get('vocab_size'):,}, {positions:,} positions"))
    if summary:
        epochs = f" ({summary['epochs']:.2f} epochs)" if summary.get("epochs") is not None else ""
        rows.append(("steps", f"{summary['step']:,} optimizer steps of {summary['batch']}{epochs}"))
        if summary.get("tokens"):
            rows.append(("tokens seen", f"{summary['tokens']:,}"))
        rows.append(("learning rate", f"{t.get('schedule', '')} schedule, peak {summary['lr_peak']:.3g}, "
                                      f"{summary['warmup_steps']} warmup steps, last {summary['lr_final']:.3g}"))
    elif resolved:
        rows.append(("steps", f"{resolved.get('total_steps', '?')} planned, batch {resolved.get('batch_size', '?')}"))
    rows.append(("sequence length", str(t.get("seq_len", "?"))))
    rows.append(("precision", f"{t.get('precision', '?')}" + (f", matmuls {resolved['matmul_precision']}"
                                                              if resolved.get("matmul_precision") else "")))
    if summary and summary.get("train_loss") is not None:
        rows.append(("final train loss", f"{summary['train_loss']:.4f} (mean of the last steps)"))
    return rows


def _evaluation_table(summary: dict) -> list[str]:
    """Before and after, where the run evaluated its starting model (the closing lines say the rest)."""
    first, last = summary.get("first_eval") or {}, summary.get("last_eval") or {}
    names = [k for k in last if k.startswith("eval_")]
    if not first or not names:
        return []
    lines = ["| metric | starting model | final model |", "|---|---:|---:|"]
    for name in names:
        cells = [f"{d[name]:,}" if isinstance(d.get(name), int) else f"{d[name]:.4f}" if d.get(name) is not None
                 else "" for d in (first, last)]
        lines.append(f"| {name.removeprefix('eval_')} | {cells[0]} | {cells[1]} |")
    return lines


def _usage(kind: str, name: str, model_config: dict) -> list[str]:
    where = f'path = "{name}"  # this folder, or its hub id once pushed'
    trust = ", trust_remote_code=True" if _family(model_config)[1] else ""
    if kind == "sentence-transformers":
        return ["```python", "from sentence_transformers import SentenceTransformer", "", where,
                f"model = SentenceTransformer(path{trust})", 'embeddings = model.encode(["a sentence", "another one"])',
                "```"]
    auto = KINDS[kind][3]
    lines = ["```python", f"from transformers import AutoTokenizer, {auto}", "", where,
             f"tokenizer = AutoTokenizer.from_pretrained(path{trust})", f"model = {auto}.from_pretrained(path{trust})"]
    if KINDS[kind][0] == "fill-mask":
        lines += ['inputs = tokenizer("The capital of France is {}.".format(tokenizer.mask_token), '
                  'return_tensors="pt")']
    else:
        lines += ['inputs = tokenizer("some text", return_tensors="pt")']
    lines += ["logits = model(**inputs).logits", "```"]
    labels = model_config.get("id2label")
    if labels and KINDS[kind][0] != "fill-mask":
        lines += ["", "Labels: " + ", ".join(f"`{labels[k]}`" for k in sorted(labels, key=int)) + "."]
    return lines


def model_card(export_dir: str, run_dir: str | None, step: int | None = None) -> str:
    """The card's text for `export_dir`, from `run_dir`'s records where there are any; `step`: the
    checkpoint exported, whose run summary counts only if the run ended there."""
    model_config = _read_json(os.path.join(export_dir, "config.json")) or {}
    run_config = (_read_json(os.path.join(run_dir, RUN_CONFIG)) if run_dir else None) or {}
    summary = _read_json(os.path.join(run_dir, RUN_SUMMARY)) if run_dir else None
    if summary is not None and step is not None and summary.get("step") != step:
        summary = None
    kind = _kind(export_dir, model_config)
    pipeline_tag, library, what, _ = KINDS[kind]
    base = _base_model(run_config["init_from"]) if run_config.get("init_from") else None
    family = _family(model_config)[0]
    header = ["---", f"library_name: {library}", f"pipeline_tag: {pipeline_tag}", "tags:", f"- {family.lower()}",
              "- neobert_jax", f"- {pipeline_tag}"] + ([f"base_model: {base}"] if base else []) + ["---"]
    name = os.path.basename(os.path.normpath(export_dir))
    if name in ("hf", "st") and run_dir:
        name = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
    body = [f"# {name}", "", f"A {family} encoder after {what} with neobert_jax (JAX/Flax); the weights "
            "load in PyTorch as below.", ""]
    if run_config:
        body += ["## Training", "", "| | |", "|---|---|"]
        body += [f"| {key} | {value} |" for key, value in _training_rows(run_config, summary, model_config)]
        body.append("")
    if summary:
        table = _evaluation_table(summary)
        if table:
            body += ["## Evaluation", ""] + table + [""]
        elif summary.get("closing_lines"):  # no before/after table: the run's own closing lines say the results
            body += [f"- {line}" for line in summary["closing_lines"]] + [""]
        if summary.get("loss_curve") and os.path.isfile(os.path.join(run_dir, LOSS_CURVE_FILE)):
            body += [f"![training loss]({LOSS_CURVE_FILE})", ""]
    if not run_config:
        body += ["No training records were found beside the weights (converted without its run directory).", ""]
    body += ["## Use", ""] + _usage(kind, name, model_config) + [""]
    return "\n".join(header + [""] + body)


def write_model_card(export_dir: str, run_dir: str | None, step: int | None = None) -> str:
    """Writes export_dir/README.md (through a temp file) and copies the run's loss curve beside it."""
    text = model_card(export_dir, run_dir, step)
    curve = os.path.join(run_dir, LOSS_CURVE_FILE) if run_dir else ""
    if curve and os.path.isfile(curve) and f"]({LOSS_CURVE_FILE})" in text:
        shutil.copyfile(curve, os.path.join(export_dir, LOSS_CURVE_FILE))
    path = os.path.join(export_dir, CARD_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path
