"""A default corpus of real technical English that ships with every Python install.

Made from `pydoc_data.topics` (the language reference behind `help()`) and the docstrings of the
standard library, read with `ast` so that no module is imported (some have import side effects).
One paragraph per document, like the users' corpora, so the main command runs offline.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
import pathlib
import platform
import sysconfig

import pydoc_data.topics

# Folders of the standard library that hold tests, sample data or vendored packages rather than docs.
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_MIN_WORDS = 5
_MIN_PROSE_FRACTION = 0.8  # letters and spaces; code and grammar rules fall below
_UNDERLINE_CHARS = set("*=-~^#")

NAME = f"<built-in corpus: Python {platform.python_version()} docs and docstrings>"


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a reST-ish text, each joined onto one line.

    Doctests, heading underlines, code-like blocks (mostly symbols) and fragments of a few words are
    left out: they are not the running prose the corpus is meant to be.
    """
    kept = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        if not lines or any(line.startswith(">>>") or set(line) <= _UNDERLINE_CHARS for line in lines):
            continue
        paragraph = " ".join(" ".join(lines).split())
        prose_chars = sum(c.isalpha() or c == " " for c in paragraph)
        if len(paragraph.split()) >= _MIN_WORDS and prose_chars >= _MIN_PROSE_FRACTION * len(paragraph):
            kept.append(paragraph)
    return kept


def _docstrings(source_path: pathlib.Path) -> list[str]:
    try:
        tree = ast.parse(source_path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []  # a few stdlib files are deliberately broken samples; they hold no docs
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    nodes = (node for node in ast.walk(tree) if isinstance(node, documented))
    return [doc for doc in map(ast.get_docstring, nodes) if doc]


def _stdlib_sources() -> list[pathlib.Path]:
    """The standard library's .py files sorted by path, without descending into skipped folders."""
    paths = []
    for folder, subfolders, files in os.walk(sysconfig.get_paths()["stdlib"]):
        subfolders[:] = [name for name in subfolders if name not in _SKIPPED_DIRS]
        paths.extend(pathlib.Path(folder, name) for name in files if name.endswith(".py"))
    return sorted(paths)


def _cache_path(sources: list[pathlib.Path]) -> pathlib.Path:
    """A file named by everything the corpus is made from: this module's code, the Python version
    and every source's size and mtime, so an edited or upgraded install makes a new one."""
    identity = hashlib.sha256(pathlib.Path(__file__).read_bytes())
    identity.update(f"{platform.python_version()} {pydoc_data.topics.__file__}".encode())
    for path in [pathlib.Path(pydoc_data.topics.__file__), *sources]:
        stat = path.stat()
        identity.update(f"{path} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    root = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    return root / "neobert_jax" / f"builtin_corpus-{identity.hexdigest()[:16]}.txt"


@functools.lru_cache(maxsize=1)
def builtin_documents() -> tuple[str, ...]:
    """Distinct paragraphs in a fixed order (topics by name, then stdlib files by path): ~1.7 MB.

    Exact repeats (inherited docstrings such as "Return self==value.") are kept once, so a held-out
    eval paragraph cannot also appear in the training split. Parsing the standard library takes
    seconds, so the result is cached as one paragraph per line (paragraphs hold no newlines).
    """
    sources = _stdlib_sources()
    cache = _cache_path(sources)
    try:
        return tuple(cache.read_text(encoding="utf-8").split("\n"))
    except (OSError, UnicodeDecodeError):
        pass
    documents = _build(sources)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text("\n".join(documents), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home only costs the next run the same seconds
    return documents


def _build(sources: list[pathlib.Path]) -> tuple[str, ...]:
    documents = []
    for name in sorted(pydoc_data.topics.topics):
        documents.extend(_paragraphs(pydoc_data.topics.topics[name]))
    for path in sources:
        for doc in _docstrings(path):
            documents.extend(_paragraphs(doc))
    return tuple(dict.fromkeys(documents))
