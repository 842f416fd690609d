"""The narrow views of the deployment's settings that schemas, streams, processors and sinks take.

``chargemesh.infra.config.Settings`` satisfies every one of them; nothing below infra imports
infra (the import contract in pyproject.toml checks it). Each protocol names only what its
users read, so a test or another host can pass a small object of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class KafkaSettings(Protocol):
    """How a Kafka client of the mesh connects and how the topics are laid out."""

    @property
    def partitions(self) -> int: ...

    @property
    def replication_factor(self) -> int: ...

    @property
    def session_timeout_ms(self) -> int: ...

    @property
    def consumer_fetch_wait_ms(self) -> int: ...

    @property
    def bootstrap_servers(self) -> str: ...

    @property
    def schema_registry_url(self) -> str: ...

    def kafka_client_config(self) -> dict[str, Any]: ...


class ClickHouseSettings(Protocol):
    """Where the ClickHouse history lives and who connects."""

    @property
    def clickhouse_address(self) -> tuple[str, int]: ...

    @property
    def clickhouse_database(self) -> str: ...

    @property
    def clickhouse_user(self) -> str: ...

    @property
    def clickhouse_password(self) -> str: ...


class ProcessorSettings(KafkaSettings, Protocol):
    """What a processor worker reads: Kafka, its web port, trust anchors and its own key."""

    @property
    def worker_web_port(self) -> int: ...

    @property
    def trust_anchors_path(self) -> Path: ...

    @property
    def processor_key_path(self) -> Path: ...

    @property
    def state_dir(self) -> Path: ...


class SinkSettings(KafkaSettings, ClickHouseSettings, Protocol):
    """What the ClickHouse sink reads: both ends."""
