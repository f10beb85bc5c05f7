"""SIGTERM/SIGINT before a run installs its own handlers (the imports take seconds): a clean exit
0 saying there is nothing to save, not -15. The scripts import this first; it imports nothing heavy."""

import signal
import sys


def _stopped_before_start(signum, frame):
    print(f"{signal.Signals(signum).name} before the run started: nothing to save", file=sys.stderr)
    sys.exit(0)


def install() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped_before_start)
