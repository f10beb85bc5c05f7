"""Where XLA's compilation of one program goes, pass by pass, from a log of the run.

The start-up line says how long XLA took (runtime/compile_log.py); this says on what: autotuning,
fusion, the backend's code generation. Run the command with XLA's own timers switched on, then read
its log:

    TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=hlo_pass_pipeline=1,gpu_compiler=1,nvptx_compiler=1 \
        python scripts/contrastive.py ... --config.compilation_cache_dir= --config.resume=False 2> run.log
                                                              # cpu_compiler=1 on the CPU
    python scripts/compile_passes.py run.log --module jit_train_step

Two tables: the compiler's own timers that name the module (its HLO passes, its backend), and the
passes that ran on the module, summed over their calls. A pass that is itself a pipeline counts the
passes inside it too, so rows can overlap; the compiler's timers are the totals.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

# a log line can follow a progress bar's text on the same terminal line, so it is searched for, not matched
LINE = re.compile(r"[IWE]\d{4} [\d:.]+\s+(?P<thread>\d+) (?P<source>[\w.]+):\d+\] (?P<text>.*)$")
TIMER = re.compile(r"^(?P<label>.+?) time: [\d.]+ \w+ \((?P<us>\d+) us\)")
PIPELINE = re.compile(r"^Running HLO pass pipeline on module (?P<module>[^:\s]+):")


def parse(lines) -> tuple[dict, dict]:
    """(passes, timers): {module: {pass: [seconds, calls]}} and {label: [seconds, calls]}."""
    passes = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0]))
    timers = collections.defaultdict(lambda: [0.0, 0])
    module_of_thread = {}
    for line in lines:
        m = LINE.search(line.rstrip("\n"))
        if not m:
            continue
        text, thread = m["text"], m["thread"]
        pipeline = PIPELINE.match(text)
        if pipeline:
            module_of_thread[thread] = pipeline["module"]
            continue
        timer = TIMER.match(text)
        if not timer:
            continue
        seconds = int(timer["us"]) / 1e6
        label = timer["label"]
        if label.startswith("HLO pass: "):
            entry = passes[module_of_thread.get(thread, "?")][label[len("HLO pass: "):]]
        else:
            entry = timers[label]
        entry[0] += seconds
        entry[1] += 1
    return passes, timers


def table(rows, title: str) -> str:
    out = [f"| {title} | seconds | calls |", "|---|---:|---:|"]
    out += [f"| {name} | {seconds:.3f} | {calls} |" for name, (seconds, calls) in rows]
    return "\n".join(out)


def report(passes: dict, timers: dict, module: str, top: int) -> str:
    named = [(label, v) for label, v in timers.items() if re.search(rf"\b{re.escape(module)}\b", label)]
    ranked = sorted(passes.get(module, {}).items(), key=lambda kv: -kv[1][0])[:top]
    if not named and not ranked:
        known = sorted(set(passes) | {m for label in timers for m in re.findall(r"\bjit_\w+", label)})
        raise ValueError(f"no timers for module {module!r} in the log (modules seen: {', '.join(known) or 'none'}; "
                         "was it run with TF_CPP_MIN_LOG_LEVEL=0 and TF_CPP_VMODULE set, and did it compile the "
                         "program, not load it from a cache or resume past it?)")
    parts = []
    if named:
        parts.append(table(sorted(named, key=lambda kv: -kv[1][0]), f"{module}: compiler timer"))
    if ranked:
        parts.append(table(ranked, f"{module}: HLO pass (top {top})"))
    return "\n\n".join(parts)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", help="the run's stderr, written with XLA's timers on (see above)")
    p.add_argument("--module", default="jit_train_step", help="the program, as XLA names it (default: %(default)s)")
    p.add_argument("--top", type=int, default=15, help="how many passes to list (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        with open(args.log, errors="replace") as f:
            passes, timers = parse(f)
        print(report(passes, timers, args.module, args.top))
    except (OSError, ValueError) as e:
        sys.exit(f"error: {args.log}: {e}")


if __name__ == "__main__":
    main()
