"""A second real corpus for scripts/bench_recipe.py: the GNU info manuals installed with Debian
packages, one paragraph per line (docs/recipe.md).

    python scripts/info_corpus.py runs/gnu_info_4500.txt 4500

Each blank-line block of /usr/share/info/*.info*.gz becomes one line, without control characters
(info files mark nodes with NUL bytes, which the trainer rightly refuses as binary). A block is kept
with >= 5 words, >= 80% letters and spaces, and no node, menu or cross-reference lines;
duplicates are dropped and the rest shuffled with random.Random(1).
"""
import argparse
import glob
import gzip
import os
import random
import re

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("out", help="the text file to write (one paragraph per line)")
p.add_argument("count", nargs="?", type=int, default=4500, help="paragraphs to keep (default 4500)")
args = p.parse_args()
paths = sorted(glob.glob("/usr/share/info/*.info*.gz"))
if not paths:
    p.exit(1, "error: no GNU info manuals under /usr/share/info (install the packages' info docs)\n")
paras, seen = [], set()
for path in paths:
    text = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        if not lines or any(l.startswith(("File:", "* ", "\x1f", "Node:", "Tag Table")) or "::" in l for l in lines):
            continue
        para = " ".join(re.sub(r"[\x00-\x1f\x7f]", "", l).strip() for l in lines)
        words = para.split()
        letters = sum(c.isalpha() or c == " " for c in para)
        if len(words) < 5 or letters < 0.8 * len(para) or para in seen:
            continue
        seen.add(para)
        paras.append(para)
random.Random(1).shuffle(paras)
out = paras[:args.count]
with open(args.out + ".tmp", "w", encoding="utf-8") as f:
    f.write("\n".join(out) + "\n")
os.replace(args.out + ".tmp", args.out)
print(f"{len(paths)} manuals, {len(paras)} paragraphs, {len(out)} written to {args.out}")
