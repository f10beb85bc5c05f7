"""A retrieval task built from the GNU info manuals on this machine: find a manual section's opening
paragraph from its title ("coreutils: ls invocation" -> "‘ls’ lists information about ...").

Every node of /usr/share/info/*.info*.gz gives one pair: the query is "MANUAL: node title" and the
document is the node's first prose paragraph of 8+ words (headings, menus, examples, tables and
one-line lead-ins such as "Normally sed is invoked like this:" are passed over: they say too little
to be found). The manual name stays in the query because titles like "Overview" or "Invoking" recur
in many manuals and would otherwise be ambiguous or duplicated; it leaks little, since train and test
are split by manual, so within the test corpus it only tells manuals apart, not the sections of one
manual. Top and index nodes are skipped, and documents that occur more than once (licenses, shared
chapters) are dropped, so every query has exactly one relevant document. Every skip is counted.

    python -m neobert_jax.data.info_retrieval OUT_DIR [--info-dir DIR] [--test-percent P]
                                              [--max-train N] [--max-test N] [--seed S]

writes the same layout as `builtin_retrieval`: OUT_DIR/train.jsonl (anchor, positive) and
OUT_DIR/test/ (corpus.jsonl, queries.jsonl, qrels.tsv).
"""

from __future__ import annotations

import collections
import gzip
import pathlib
import re
import sys
import zlib

from neobert_jax.data.builtin_retrieval import subsample, task_arguments, write_pairs
from neobert_jax.data.errors import DataError

SKIP_REASONS = ("too short", "duplicate documents", "duplicate queries", "top/index nodes", "unreadable files")

_MIN_DOC_WORDS = 8
_MIN_LETTER_SHARE = 0.7
_DUP_KEY_WORDS = 10
_HEADER = re.compile(r"File:.*?Node:\s*(?:\x7f([^\x7f]+)\x7f|([^,\t]+))")
_UNDERLINE = re.compile(r"\s*([=*.\-])\1{2,}\s*")
_XREF = re.compile(r"\*([Nn])ote\s+([^:]+?)(?:::|:\s*[^.,;:]*(?=[.,;]))")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def manual_name(path) -> str:
    """find.info-2.gz -> find: the parts of a split manual are one manual."""
    return re.sub(r"\.info(-\d+)?$", "", pathlib.Path(path).name.removesuffix(".gz"))


def _is_prose(lines: list[str]) -> bool:
    """Not a heading, menu, example or table (those are underlined, start "* " or are indented)."""
    return not (lines[0].lstrip().startswith("* ") or any(_UNDERLINE.fullmatch(line) for line in lines)
                or any(line.startswith(("    ", " -- ")) for line in lines))


def _xref_text(match) -> str:
    """How an info reader shows a cross-reference: "*Note X::" -> "See X", "see *note X::" -> "see X"."""
    return ("See " if match.group(1) == "N" else "") + match.group(2)


def _document(body: str) -> str | None:
    """The first prose paragraph with real text, on one line; None if it is short or not words."""
    for paragraph in re.split(r"\n\s*\n", body):
        lines = [line for line in _CONTROL.sub("", paragraph).split("\n") if line.strip()]
        if not lines or not _is_prose(lines):
            continue
        text = " ".join(_XREF.sub(_xref_text, " ".join(lines)).split())
        if len(_XREF.sub("", " ".join(lines)).split()) < 3:
            continue  # only a cross-reference ("*Note Invoking::.")
        chars = text.replace(" ", "")
        letters = sum(c.isalpha() for c in chars)
        long_enough = len(text.split()) >= _MIN_DOC_WORDS and letters >= _MIN_LETTER_SHARE * len(chars)
        if long_enough:
            return text
    return None


def _doc_key(doc: str) -> str:
    """Documents count as one when their first words agree (case, punctuation and quote style aside):
    manuals share texinfo chapters (date input formats, file permissions) with small edits, and a
    twin on the other side of the split would leak the test answer."""
    return " ".join(re.findall(r"[^\W_]+", doc.lower())[:_DUP_KEY_WORDS])


def _nodes(path: pathlib.Path):
    """(title, body) of each node in one info file."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        chunks = f.read().split("\x1f")[1:]  # the part before the first separator is the preamble
    for chunk in chunks:
        header, _, body = chunk.lstrip("\n").partition("\n")
        if match := _HEADER.match(header):
            yield (match.group(1) or match.group(2)).strip(), body


def info_pairs(info_dir: str = "/usr/share/info", skipped: collections.Counter | None = None):
    """(manual, query, document) of every usable node, in file order.

    `skipped` (if given) counts what was left out: unreadable files, top/index nodes, nodes without
    a long enough prose paragraph, duplicated documents and duplicate queries.
    """
    skipped = collections.Counter() if skipped is None else skipped
    files = sorted(pathlib.Path(info_dir).glob("*.info*.gz")) if pathlib.Path(info_dir).is_dir() else []
    found, readable = [], 0
    for path in files:
        manual = manual_name(path)
        try:
            nodes = list(_nodes(path))
        except (OSError, EOFError, zlib.error):
            skipped["unreadable files"] += 1
            continue
        readable += 1
        for title, body in nodes:
            if title == "Top" or re.search(r"\bindex\b", title, re.I):
                skipped["top/index nodes"] += 1
            elif (doc := _document(body)) is None:
                skipped["too short"] += 1
            else:
                found.append((manual, f"{manual}: {title}", doc))
    if not readable:
        raise DataError(f"{info_dir}: no readable GNU info manuals (*.info*.gz)")
    doc_counts = collections.Counter(_doc_key(doc) for _, _, doc in found)
    seen_queries, pairs = set(), []
    for manual, query, doc in found:
        if doc_counts[_doc_key(doc)] > 1:
            skipped["duplicate documents"] += 1
        elif query in seen_queries:
            skipped["duplicate queries"] += 1
        else:
            seen_queries.add(query)
            pairs.append((manual, query, doc))
    return pairs


def split_by_manual(pairs, test_percent: int):
    """-> (train, test) lists of (query, doc) and the (train, test) manual names.

    Manuals differ in size by orders of magnitude, so a plain hash threshold (as in
    `builtin_retrieval`) could hold out far too few pairs or far too many. Instead manuals are taken
    in zlib.crc32 order of their names and held out while the test side stays within `test_percent`
    of all pairs; if none fits, the smallest is. The split is deterministic for a given set of
    installed manuals (installing another can move others), and no manual is on both sides.
    """
    if not 0 < test_percent < 100:
        raise DataError(f"test percent {test_percent}: must be between 1 and 99")
    sizes = collections.Counter(manual for manual, _, _ in pairs)
    if len(sizes) < 2:
        raise DataError(f"{len(sizes)} manual(s) with usable nodes: a train/test split by manual needs 2")
    budget, held_out = len(pairs) * test_percent / 100, set()
    for manual in sorted(sizes, key=lambda name: (zlib.crc32(name.encode()), name)):
        if sizes[manual] <= budget:
            held_out.add(manual)
            budget -= sizes[manual]
    held_out = held_out or {min(sizes, key=lambda name: (sizes[name], name))}
    sides = {True: [], False: []}
    for manual, query, doc in pairs:
        sides[manual in held_out].append((query, doc))
    return sides[False], sides[True], sorted(set(sizes) - held_out), sorted(held_out)


def write_task(out_dir: str, *, info_dir: str = "/usr/share/info", test_percent: int = 20, max_train: int = 0,
               max_test: int = 0, seed: int = 0, overwrite: bool = False) -> dict:
    skipped = collections.Counter()
    pairs = info_pairs(info_dir, skipped)
    train, test, train_manuals, test_manuals = split_by_manual(pairs, test_percent)
    train, test = subsample(train, test, max_train, max_test, seed)
    counts = write_pairs(out_dir, train, test, overwrite=overwrite)
    return {**counts, "train_manuals": len(train_manuals), "test_manuals": len(test_manuals),
            "skipped": {reason: skipped[reason] for reason in SKIP_REASONS}}


def main(argv=None) -> None:
    parser = task_arguments(__doc__, "pairs (whole manuals)")
    parser.add_argument("--info-dir", default="/usr/share/info")
    args = parser.parse_args(argv)
    try:
        counts = write_task(args.out_dir, info_dir=args.info_dir, test_percent=args.test_percent,
                            max_train=args.max_train, max_test=args.max_test, seed=args.seed,
                            overwrite=args.overwrite)
    except (DataError, FileExistsError) as e:
        sys.exit(f"error: {e}")
    skipped = ", ".join(f"{n} {reason}" for reason, n in counts["skipped"].items())
    print(f"{args.out_dir}: {counts['train_pairs']} train pairs, {counts['test_queries']} test queries "
          f"({counts['train_manuals'] + counts['test_manuals']} manuals: {counts['train_manuals']} train, "
          f"{counts['test_manuals']} test); skipped nodes/files: {skipped}")


if __name__ == "__main__":
    main()
