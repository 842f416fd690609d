"""Run one processor worker: ``python -m chargemesh.processors.worker [--index N]``.

Settings come from the environment (``CHARGEMESH_*``), like every chargemesh process.
"""

from __future__ import annotations

import argparse
import logging

from faust import Worker

from chargemesh.infra.config import load_settings
from chargemesh.processors.app import Processors


def run_worker(index: int = 0, loglevel: str = "warning") -> None:
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
