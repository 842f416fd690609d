"""Create and inspect the chargemesh topics with confluent-kafka's AdminClient.

Works the same against the embedded broker and a production Kafka cluster: topics are created
explicitly (never auto-created on first produce, see STACK.md) with the catalogue's configs.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from chargemesh.infra.config import Settings
from chargemesh.streams.topics import ALL_TOPICS, TopicSpec, partitions_for

ADMIN_REQUEST_TIMEOUT_S = 30.0
METADATA_TIMEOUT_S = 5.0
TOPICS_VISIBLE_WAIT_S = 30.0
POLL_INTERVAL_S = 0.2

# librdkafka logs connection failures itself; route them to Python logging (silent unless the
# caller configures logging) so `chargemesh status` prints a table, not a stream of retries.
_LOG = logging.getLogger("chargemesh.infra.kafka")
_LOG.addHandler(logging.NullHandler())


class TopicAdminError(RuntimeError):
    """The cluster refused or did not answer a topic operation."""


@dataclasses.dataclass(frozen=True)
class TopicReport:
    created: tuple[str, ...]
    existing: tuple[str, ...]
    # Human-readable "name: has N partitions, chargemesh expects M" lines.
    mismatched: tuple[str, ...]


def admin_client(settings: Settings) -> AdminClient:
    conf = settings.kafka_client_config()
    conf["logger"] = _LOG
    return AdminClient(conf)


def topic_partitions(settings: Settings, timeout_s: float = METADATA_TIMEOUT_S) -> dict[str, int]:
    """Partition count of every topic the cluster reports. Raises TopicAdminError if unreachable."""
    try:
        metadata = admin_client(settings).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise TopicAdminError(
            f"Kafka at {settings.bootstrap_servers} did not answer: {exc}"
        ) from exc
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def expected_partitions(settings: Settings) -> dict[str, int]:
    return {spec.name: partitions_for(spec, settings.partitions) for spec in ALL_TOPICS}


def mismatches(settings: Settings, present: dict[str, int]) -> list[str]:
    lines = []
    for name, want in expected_partitions(settings).items():
        have = present.get(name)
        if have is not None and have != want:
            lines.append(f"{name}: has {have} partitions, chargemesh expects {want}")
    return lines


def _new_topic(spec: TopicSpec, settings: Settings) -> NewTopic:
    return NewTopic(
        spec.name,
        num_partitions=partitions_for(spec, settings.partitions),
        replication_factor=settings.replication_factor,
        config=spec.configs(),
    )


def _create_missing(settings: Settings, missing: list[TopicSpec]) -> None:
    if not missing:
        return
    # Keep the client referenced until every future resolved: a collected client cancels them.
    client = admin_client(settings)
    futures = client.create_topics(
        [_new_topic(spec, settings) for spec in missing],
        operation_timeout=ADMIN_REQUEST_TIMEOUT_S,
        request_timeout=ADMIN_REQUEST_TIMEOUT_S,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=ADMIN_REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # created concurrently by someone else: fine
            raise TopicAdminError(f"creating topic {name} failed: {exc}") from exc


def _wait_visible(settings: Settings, names: set[str]) -> dict[str, int]:
    """Topic creation is asynchronous on a real cluster: wait until metadata shows them all."""
    deadline = time.monotonic() + TOPICS_VISIBLE_WAIT_S
    present = topic_partitions(settings)
    while not names <= present.keys():
        if time.monotonic() > deadline:
            missing = sorted(names - present.keys())
            raise TopicAdminError(
                f"topics still missing after {TOPICS_VISIBLE_WAIT_S:.0f} s: {missing}"
            )
        time.sleep(POLL_INTERVAL_S)
        present = topic_partitions(settings)
    return present


def ensure_topics(settings: Settings) -> TopicReport:
    """Create every topic of ``ALL_TOPICS`` that is missing; leave existing topics as they are."""
    present = topic_partitions(settings)
    missing = [spec for spec in ALL_TOPICS if spec.name not in present]
    _create_missing(settings, missing)
    present = _wait_visible(settings, {spec.name for spec in ALL_TOPICS})
    return TopicReport(
        created=tuple(spec.name for spec in missing),
        existing=tuple(spec.name for spec in ALL_TOPICS if spec not in missing),
        mismatched=tuple(mismatches(settings, present)),
    )
