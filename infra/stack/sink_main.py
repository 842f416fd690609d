"""``python -m chargemesh.infra.stack.sink_main``: the ClickHouse sink in the foreground, configured from
the deployment's settings (``CHARGEMESH_*``, the TOML file). The sink itself
(:mod:`chargemesh.sinks.clickhouse_sink`) takes its settings as a ``SinkSettings`` protocol and
never loads them."""

from __future__ import annotations

import logging

from chargemesh.infra.config import load_settings
from chargemesh.sinks.clickhouse_sink import run_sink


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_sink(load_settings())


if __name__ == "__main__":
    main()
