"""Run one processor worker: ``python -m chargemesh.infra.stack.worker_main [--index N]``.

Settings come from the environment (``CHARGEMESH_*``), like every chargemesh process.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import signal

from faust import Worker

from chargemesh.infra.config import load_settings
from chargemesh.processors.runtime.app import Processors


PROFILE_ENV = "CHARGEMESH_WORKER_PROFILE"
# Faust's worker (mode) takes SIGUSR1 (logs task stacks) and SIGUSR2 (enters pdb).
PROFILE_SIGNAL = signal.SIGRTMIN + 1


def _install_profile_toggle(path: str) -> None:
    """Profiling on demand (``infra/bench/profile_worker.py``): the first PROFILE_SIGNAL starts
    cProfile on the event loop's thread, the next stops it and dumps pstats to ``path``."""
    profiler: list[cProfile.Profile] = []

    def toggle(signum: int, frame: object) -> None:
        if profiler:
            prof = profiler.pop()
            prof.disable()
            prof.dump_stats(path)
        else:
            profiler.append(cProfile.Profile())
            profiler[0].enable()

    signal.signal(PROFILE_SIGNAL, toggle)


def run_worker(index: int = 0, loglevel: str = "warning") -> None:
    if os.environ.get(PROFILE_ENV):
        _install_profile_toggle(os.environ[PROFILE_ENV])
    settings = load_settings()
    processors = Processors(settings, index)
    # The web port comes from the app's settings (one per worker index).
    worker = Worker(processors.app, loglevel=loglevel)
    worker.execute_from_commandline()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", type=int, default=0, help="worker number (web port offset)")
    parser.add_argument("--loglevel", default="warning")
    args = parser.parse_args()
    logging.basicConfig(level=args.loglevel.upper())
    run_worker(args.index, args.loglevel)


if __name__ == "__main__":
    main()
