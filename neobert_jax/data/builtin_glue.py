"""GLUE-style tasks built from local text: the running interpreter's standard-library docstrings, so
a fine-tuning comparison (a pretrained export against a random-init model) runs offline.

- `stdlib-family`: a docstring's first paragraph -> its package's family (FAMILIES: files,
  concurrency, formats, ...), single-label;
- `stdlib-pair`: two docstrings -> "1" if they come from the same module (file), else "0";
- `py-identifiers`: a docstring's words -> BIO tags (B-MOD, B-CLASS, B-FUNC) for the Python names
  in it that the stdlib defines, a token-classification task (`tokens`/`tags` list columns).

Docstrings are read with `ast` (nothing is imported, so no module runs) through
builtin_retrieval's helpers; one that occurs twice is dropped. Every task is split by top-level
package (all of `asyncio.*` is on one side), so train and dev share no module. Everything is in
sorted order and drawn with a fixed seed: the same interpreter gives the same files.

    python scripts/glue.py --make-builtin DIR
"""

from __future__ import annotations

import ast
import collections
import json
import os
import re
import zlib

import numpy as np

from neobert_jax.data.builtin_retrieval import stdlib_files, summary
from neobert_jax.fileio import atomic_dir

FAMILIES = {
    "files": "os pathlib shutil glob fnmatch tempfile filecmp fileinput stat genericpath posixpath ntpath io "
             "tarfile zipfile gzip bz2 lzma",
    "concurrency": "asyncio threading multiprocessing concurrent queue sched subprocess selectors asynchat "
                   "asyncore signal",
    "formats": "json csv xml html configparser plistlib mailbox base64 quopri pickle pickletools binhex uu "
               "tomllib netrc",
    "network": "http urllib imaplib ftplib smtplib ssl nntplib socket poplib socketserver telnetlib xmlrpc "
               "wsgiref ipaddress",
    "devtools": "unittest inspect pydoc bdb pdb doctest traceback symtable dis ast timeit trace tracemalloc "
                "pstats profile cProfile code tokenize",
    "gui": "tkinter turtle curses",
    "packaging": "distutils importlib pkgutil site sysconfig zipimport compileall modulefinder venv ensurepip",
    "numbers": "statistics random fractions decimal numbers datetime calendar operator math cmath",
}
PACKAGE_FAMILY = {package: family for family, packages in FAMILIES.items() for package in packages.split()}
TASK_FILE = "task.json"
_TOKEN = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*|\d+|\S")


def stdlib_docs() -> list[dict]:
    """{package, module, kind (function/class/method), name, doc} of every public documented def,
    in path order; docstrings that occur more than once dropped."""
    found = []
    for module, path in stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in tree.body:
            if getattr(node, "name", "_").startswith("_"):
                continue
            nodes = [(node, "class" if isinstance(node, ast.ClassDef) else "function")]
            if isinstance(node, ast.ClassDef):
                nodes += [(child, "method") for child in node.body if not getattr(child, "name", "_").startswith("_")]
            for item, kind in nodes:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and (doc := summary(item)):
                    found.append({"package": module.split(".")[0], "module": module, "kind": kind,
                                  "name": item.name, "doc": doc})
    counts = collections.Counter(d["doc"] for d in found)
    return [d for d in found if counts[d["doc"]] == 1]


def split_packages(docs: list[dict], dev_percent: int, seed: int, group=lambda d: "all") -> set[str]:
    """The dev side's packages: within each group (a family, or all), packages in a seeded hash
    order join dev while it stays under 1.5 x `dev_percent` of the group's docs (one big package
    would otherwise take half of a family); a group with no such package gives its smallest."""
    sizes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for d in docs:
        sizes[group(d)][d["package"]] += 1
    dev = set()
    for counts in sizes.values():
        limit, taken = 1.5 * dev_percent / 100 * sum(counts.values()), 0
        for package in sorted(counts, key=lambda p: (zlib.crc32(f"{seed}:{p}".encode()), p)):
            if taken + counts[package] <= limit and taken * 100 < dev_percent * sum(counts.values()):
                dev.add(package)
                taken += counts[package]
        if not taken and len(counts) > 1:
            dev.add(min(counts, key=lambda p: (counts[p], p)))
    return dev


def family_examples(docs, dev: set[str]) -> dict[str, list[dict]]:
    sides = {"train": [], "dev": []}
    for d in docs:
        if d["package"] in PACKAGE_FAMILY:
            side = "dev" if d["package"] in dev else "train"
            sides[side].append({"text": d["doc"], "label": PACKAGE_FAMILY[d["package"]], "module": d["module"]})
    return sides


def pair_examples(docs, dev: set[str], seed: int) -> dict[str, list[dict]]:
    """As many pairs as the side has docstrings, half from one module, half from two."""
    rng = np.random.default_rng(seed)
    sides = {}
    for side in ("train", "dev"):
        by_module = collections.defaultdict(list)
        for d in docs:
            if (d["package"] in dev) == (side == "dev"):
                by_module[d["module"]].append(d["doc"])
        modules = sorted(by_module)
        multi = [m for m in modules if len(by_module[m]) >= 2]
        weights = np.asarray([len(by_module[m]) for m in multi], np.float64)
        rows = []
        for i in range(sum(len(v) for v in by_module.values())):
            if i % 2 == 0:
                m = multi[rng.choice(len(multi), p=weights / weights.sum())]
                a, b = rng.choice(len(by_module[m]), 2, replace=False)
                rows.append({"text": by_module[m][a], "text_pair": by_module[m][b], "label": "1", "module": m})
            else:
                m1, m2 = (modules[j] for j in rng.choice(len(modules), 2, replace=False))
                rows.append({"text": by_module[m1][rng.integers(len(by_module[m1]))],
                             "text_pair": by_module[m2][rng.integers(len(by_module[m2]))], "label": "0",
                             "module": f"{m1}|{m2}"})
        sides[side] = rows
    return sides


def _identifier_like(token: str, following: str) -> bool:
    return "_" in token or "." in token or following == "(" or (token[:1].isupper() and token[1:] != token[1:].upper()
                                                                and any(c.isupper() for c in token[1:]))


def tag_tokens(tokens: list[str], names: dict[str, set[str]]) -> list[str]:
    """B-MOD / B-CLASS / B-FUNC for a token that looks like code (a dot, an underscore, a call or
    CamelCase) and names a stdlib module, class or function (a dotted name by its last part), else O."""
    tags = []
    for i, token in enumerate(tokens):
        tag = "O"
        if _identifier_like(token, tokens[i + 1] if i + 1 < len(tokens) else ""):
            last = token.rsplit(".", 1)[-1]
            if token in names["MOD"]:
                tag = "B-MOD"
            elif last in names["CLASS"]:
                tag = "B-CLASS"
            elif last in names["FUNC"]:
                tag = "B-FUNC"
        tags.append(tag)
    return tags


def identifier_examples(docs, dev: set[str]) -> dict[str, list[dict]]:
    """Docstrings with at least one tagged name, as word tokens and their tags."""
    names = {"MOD": {d["module"] for d in docs} | {d["package"] for d in docs},
             "CLASS": {d["name"] for d in docs if d["kind"] == "class"},
             "FUNC": {d["name"] for d in docs if d["kind"] != "class"}}
    sides = {"train": [], "dev": []}
    for d in docs:
        tokens = _TOKEN.findall(d["doc"])
        tags = tag_tokens(tokens, names)
        if any(t != "O" for t in tags):
            sides["dev" if d["package"] in dev else "train"].append({"tokens": tokens, "tags": tags,
                                                                     "module": d["module"]})
    return sides


TASKS = {
    "stdlib-family": {"problem_type": "single_label_classification", "metrics": ["accuracy", "macro_f1"],
                      # every label named: a subsampled train split may miss one that dev has
                      "config": {"data.text_column": "text", "data.label_column": "label",
                                 "data.labels": ",".join(sorted(FAMILIES))}},
    "stdlib-pair": {"problem_type": "single_label_classification", "metrics": ["f1", "accuracy"],
                    "positive_label": "1",
                    "config": {"data.text_column": "text", "data.text_pair_column": "text_pair",
                               "data.label_column": "label", "data.labels": "0,1"}},
    "py-identifiers": {"problem_type": "token_classification", "metrics": ["f1"],
                       "config": {"data.text_column": "tokens", "data.label_column": "tags",
                                  "data.labels": "O,B-CLASS,B-FUNC,B-MOD"}},
}


def write_builtin_tasks(out_dir: str, *, dev_percent: int = 25, seed: int = 0, overwrite: bool = False) -> dict:
    """Writes OUT_DIR/<task>/{train,dev}.jsonl and task.json for each of TASKS; -> {task: {split: n}}."""
    docs = stdlib_docs()
    family_dev = split_packages([d for d in docs if d["package"] in PACKAGE_FAMILY], dev_percent, seed,
                                group=lambda d: PACKAGE_FAMILY[d["package"]])
    dev = split_packages(docs, dev_percent, seed)
    made = {"stdlib-family": family_examples(docs, family_dev), "stdlib-pair": pair_examples(docs, dev, seed),
            "py-identifiers": identifier_examples(docs, dev)}
    counts = {}
    with atomic_dir(out_dir, if_exists="replace" if overwrite else "error") as tmp:
        for task, sides in made.items():
            os.makedirs(os.path.join(tmp, task))
            for side, rows in sides.items():
                with open(os.path.join(tmp, task, f"{side}.jsonl"), "w") as f:
                    f.writelines(json.dumps(row) + "\n" for row in rows)
            spec = {**TASKS[task], "train": "train.jsonl", "dev": "dev.jsonl",
                    "source": "neobert_jax.data.builtin_glue", "seed": seed, "dev_percent": dev_percent}
            with open(os.path.join(tmp, task, TASK_FILE), "w") as f:
                json.dump(spec, f, indent=1)
            counts[task] = {side: len(rows) for side, rows in sides.items()}
    return counts
