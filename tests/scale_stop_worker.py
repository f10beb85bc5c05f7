"""Run by test_scale_multiprocess.py as each of 2 processes (settings from JAX_* variables):
process 1 alone gets a SIGTERM after step 3; every process prints the step it stopped after."""

import json
import os
import signal

import jax

from neobert_jax.runtime import distributed
from neobert_jax.runtime.signals import StopRequest

if __name__ == "__main__":
    settings = distributed.initialize()
    step = 0
    with StopRequest(on_signal=lambda message: None) as stop:
        while step < 50 and not stop.requested():
            step += 1
            if jax.process_index() == 1 and step == 3:
                os.kill(os.getpid(), signal.SIGTERM)
    print("\n" + json.dumps({"process": jax.process_index(), "source": settings.source, "stopped_after": step}))
