"""A retrieval task built from local text: find a standard-library function's docstring from its
name and signature (`shutil.copyfile(src, dst, *, follow_symlinks=True)` -> "Copy data from src
to dst in the most efficient way possible.").

Functions and public-class methods are read with `ast` (nothing is imported). Docstrings that
occur more than once are dropped, so every query has exactly one relevant document. Train and
test are split by top-level package (all of `email.*` lands on one side), so no module is shared.

    python -m neobert_jax.data.builtin_retrieval OUT_DIR [--max-train N] [--max-test N]

writes OUT_DIR/train.jsonl (anchor, positive) and OUT_DIR/test/ (corpus.jsonl, queries.jsonl,
qrels.tsv), the layouts `data.train_files` and `eval.retrieval_dirs` read.
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import os
import pathlib
import sysconfig
import zlib

import numpy as np

from neobert_jax.fileio import atomic_dir

_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "idlelib",
                 "lib2to3", "turtledemo"}
_MIN_DOC_WORDS = 4


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def summary(node) -> str | None:
    """The docstring's first paragraph on one line, if it is a sentence or more."""
    doc = ast.get_docstring(node)
    if not doc:
        return None
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return paragraph if len(paragraph.split()) >= _MIN_DOC_WORDS else None


def _signature(node, is_method: bool) -> str:
    args = node.args
    positional = args.posonlyargs + args.args
    if is_method and positional and positional[0].arg in ("self", "cls"):
        args = ast.arguments(posonlyargs=args.posonlyargs[1:] if args.posonlyargs else [],
                             args=args.args if args.posonlyargs else args.args[1:], vararg=args.vararg,
                             kwonlyargs=args.kwonlyargs, kw_defaults=args.kw_defaults, kwarg=args.kwarg,
                             defaults=args.defaults)
    return ast.unparse(args)


def _pairs_of_file(path: pathlib.Path, module: str):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and not node.name.startswith("_"):
            if doc := summary(node):
                yield f"{module}.{node.name}({_signature(node, False)})", doc
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for child in node.body:
                if isinstance(child, functions) and not child.name.startswith("_") and (doc := summary(child)):
                    yield f"{module}.{node.name}.{child.name}({_signature(child, True)})", doc


def stdlib_files():
    """(module name, path) of the interpreter's public stdlib .py files, in sorted path order
    (tests, IDLE and site-packages left out)."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    for folder, subfolders, files in os.walk(root):  # top-down, in sorted order
        subfolders[:] = sorted(name for name in subfolders if name not in _SKIPPED_DIRS)
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith("_"):
                path = pathlib.Path(folder, name)
                yield _module_name(path, root), path


def stdlib_pairs() -> list[tuple[str, str, str]]:
    """(top-level package, query, docstring) of every public documented function, in path order."""
    found = []
    for module, path in stdlib_files():
        found += [(module.split(".")[0], q, d) for q, d in _pairs_of_file(path, module)]
    doc_counts = collections.Counter(doc for _, _, doc in found)
    seen_queries, pairs = set(), []
    for package, query, doc in found:
        if doc_counts[doc] == 1 and query not in seen_queries:
            seen_queries.add(query)
            pairs.append((package, query, doc))
    return pairs


def split_pairs(pairs, test_percent: int, max_train: int, max_test: int, seed: int):
    """-> (train, test) lists of (query, doc), split by package hash, subsampled with `seed`."""
    sides = {"train": [], "test": []}
    for package, query, doc in pairs:
        side = "test" if zlib.crc32(package.encode()) % 100 < test_percent else "train"
        sides[side].append((query, doc))
    return subsample(sides["train"], sides["test"], max_train, max_test, seed)


def subsample(train, test, max_train: int, max_test: int, seed: int):
    """-> [train, test], each cut to its limit (0 = all) by a `seed`ed draw that keeps the order."""
    rng = np.random.default_rng(seed)
    out = []
    for items, limit in ((train, max_train), (test, max_test)):
        if limit and len(items) > limit:
            items = [items[i] for i in sorted(rng.choice(len(items), limit, replace=False))]
        out.append(items)
    return out


def write_pairs(out_dir: str, train, test, *, overwrite: bool = False) -> dict:
    """Writes train (query, doc) pairs as anchor/positive and test pairs as a one-relevant-doc task."""
    with atomic_dir(out_dir, if_exists="replace" if overwrite else "error") as tmp:
        with open(os.path.join(tmp, "train.jsonl"), "w") as f:
            f.writelines(json.dumps({"anchor": q, "positive": d}) + "\n" for q, d in train)
        test_dir = os.path.join(tmp, "test")
        os.makedirs(test_dir)
        with open(os.path.join(test_dir, "queries.jsonl"), "w") as f:
            f.writelines(json.dumps({"_id": f"q{i}", "text": q}) + "\n" for i, (q, _) in enumerate(test))
        with open(os.path.join(test_dir, "corpus.jsonl"), "w") as f:
            f.writelines(json.dumps({"_id": f"d{i}", "text": d}) + "\n" for i, (_, d) in enumerate(test))
        with open(os.path.join(test_dir, "qrels.tsv"), "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"q{i}\td{i}\t1\n" for i in range(len(test)))
    return {"train_pairs": len(train), "test_queries": len(test)}


def write_task(out_dir: str, *, test_percent: int = 20, max_train: int = 0, max_test: int = 0, seed: int = 0,
               overwrite: bool = False) -> dict:
    train, test = split_pairs(stdlib_pairs(), test_percent, max_train, max_test, seed)
    return write_pairs(out_dir, train, test, overwrite=overwrite)


def task_arguments(doc: str, held_out: str) -> argparse.ArgumentParser:
    """The command line every local pair-set builder shares; `held_out` says what the split holds out."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--test-percent", type=int, default=20, help=f"share of {held_out} held out")
    parser.add_argument("--max-train", type=int, default=0, help="subsample the train pairs (0 = all)")
    parser.add_argument("--max-test", type=int, default=0, help="subsample the test queries (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    return parser


def main(argv=None) -> None:
    args = task_arguments(__doc__, "top-level packages").parse_args(argv)
    counts = write_task(args.out_dir, test_percent=args.test_percent, max_train=args.max_train,
                        max_test=args.max_test, seed=args.seed, overwrite=args.overwrite)
    print(f"{args.out_dir}: {counts['train_pairs']} train pairs, {counts['test_queries']} test queries")


if __name__ == "__main__":
    main()
