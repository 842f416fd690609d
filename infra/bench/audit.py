"""Benchmark of the P5 audit: replay rate (records/s) over a running deployment's topics or its
ClickHouse archive. The source is read once; only the replay is timed.

    python -m chargemesh.infra.bench.audit --authority ID [--source kafka|clickhouse]

prints a JSON report (``chargemesh.infra.bench.ledger`` can call :func:`bench_audit`)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from chargemesh.infra.cli.audit import clickhouse_source, kafka_source
from chargemesh.infra.config import Settings, load_settings
from chargemesh.processors.runtime.app import load_anchors
from chargemesh.processors.audit.replay import measure_replay_rate

ROUNDS_DEFAULT = 3


def bench_audit(settings: Settings, authority_id: str, source_name: str = "kafka",
                rounds: int = ROUNDS_DEFAULT) -> dict[str, Any]:
    read_started = time.perf_counter()
    source = clickhouse_source(settings) if source_name == "clickhouse" else kafka_source(
        settings)
    read_s = time.perf_counter() - read_started
    figures = measure_replay_rate(source, load_anchors(settings), authority_id,
                                  time.perf_counter, rounds)
    return {"what": "audit replay rate (records/s)", "source": source_name,
            "authority_id": authority_id, "read_s": round(read_s, 2), **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--authority", required=True)
    parser.add_argument("--source", choices=("kafka", "clickhouse"), default="kafka")
    parser.add_argument("--rounds", type=int, default=ROUNDS_DEFAULT)
    args = parser.parse_args()
    print(json.dumps(bench_audit(load_settings(), args.authority, args.source, args.rounds),
                     indent=2))


if __name__ == "__main__":
    main()
