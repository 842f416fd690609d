"""Where a worker's time goes during the posted-order throughput run of ``chargemesh bench``.

``python -m chargemesh.infra.bench.profile_worker [--orders N] [--cprofile] [--py-spy] [--keep DIR]``

Runs the bench's ledger scenario (its own embedded stack, one worker at loglevel info), then:

* prints the worker's ``BatchStats`` lines logged during the throughput run (events per batch
  and per-phase seconds: verify, decide, publish, encode, tables, gap between batches);
* with ``--cprofile``, runs the worker under cProfile for the throughput run only (toggled by
  PROFILE_SIGNAL, see ``infra/stack/worker_main.py``) and prints the top functions by cumulative and own time;
* with ``--py-spy``, samples the worker with py-spy (if installed) into a flame graph SVG.

A program that prints figures; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chargemesh.infra.bench.ledger import LedgerBench
from chargemesh.infra.stack.worker_main import PROFILE_ENV, PROFILE_SIGNAL

STATS_LINE = re.compile(r"market: .*")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=5_000)
    parser.add_argument("--stations", type=int, default=16)
    parser.add_argument("--vehicles", type=int, default=64)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--py-spy", action="store_true")
    parser.add_argument("--keep", type=Path, help="state dir to keep (logs, profiles)")
    parser.add_argument("--top", type=int, default=35)
    args = parser.parse_args()
    state_dir = args.keep or Path(tempfile.mkdtemp(prefix="chargemesh-profile-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    prof_path = state_dir / "worker.pstats"
    if args.cprofile:
        os.environ[PROFILE_ENV] = str(prof_path)  # inherited by the worker process
    bench = LedgerBench(state_dir, args.stations, args.vehicles)
    spy = None
    try:
        bench.walk_up_latency(20)  # warm-up, as the bench does
        pid = bench.worker.proc.pid if bench.worker.proc else 0
        log_path = bench.worker.log_path
        log_from = log_path.stat().st_size
        if args.cprofile:
            os.kill(pid, PROFILE_SIGNAL)
        py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        if args.py_spy and py_spy:
            spy = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "200",
                                    "--output", str(state_dir / "worker-flame.svg")],
                                   stdout=subprocess.DEVNULL, stderr=sys.stderr)
        result = bench.order_throughput(args.orders)
        if args.cprofile:
            os.kill(pid, PROFILE_SIGNAL)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        time.sleep(5.5)  # one more BatchStats interval
        print(f"orders/s {result['orders_per_s']:.0f} ({result['orders']:.0f} in "
              f"{result['seconds']:.1f}s)")
        with open(log_path, "rb") as log:
            log.seek(log_from)
            for line in log.read().decode("utf-8", "replace").splitlines():
                found = STATS_LINE.search(line)
                if found:
                    print(found.group(0))
    finally:
        bench.close()
    if args.cprofile:
        for _ in range(50):
            if prof_path.exists():
                break
            time.sleep(0.1)
        stats = pstats.Stats(str(prof_path), stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
    print(f"state dir (worker log, profiles): {state_dir}")


if __name__ == "__main__":
    main()
