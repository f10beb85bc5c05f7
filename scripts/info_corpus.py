"""A second real corpus for scripts/bench_recipe.py: the GNU info manuals installed with Debian
packages, one paragraph per line (docs/recipe.md).

    python scripts/info_corpus.py runs/gnu_info_4500.txt 4500

Each blank-line block of /usr/share/info/*.info*.gz becomes one line, without control characters
(info files mark nodes with NUL bytes, which the trainer rightly refuses as binary). A block is kept
with >= 5 words, >= 80% letters and spaces, and no node, menu or cross-reference lines;
duplicates are dropped and the rest shuffled with random.Random(1).
"""
import glob, gzip, random, re, sys
paras, seen = [], set()
for path in sorted(glob.glob("/usr/share/info/*.info*.gz")):
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
        seen.add(para); paras.append(para)
random.Random(1).shuffle(paras)
out = paras[:int(sys.argv[2]) if len(sys.argv) > 2 else 4500]
open(sys.argv[1], "w", encoding="utf-8").write("\n".join(out) + "\n")
print(len(paras), "paragraphs,", len(out), "written")
