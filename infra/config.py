"""Settings: every deployment choice comes from the environment or a TOML file, never from code.

Precedence: environment variables (``CHARGEMESH_*``) > TOML file > defaults. The TOML file is
``$CHARGEMESH_CONFIG`` if set, else ``<state_dir>/chargemesh.toml`` if it exists.

Pointing at an external Kafka and ClickHouse is a matter of setting
``CHARGEMESH_KAFKA_BOOTSTRAP`` and ``CHARGEMESH_CLICKHOUSE_HOST``; ``chargemesh up`` then starts
nothing embedded for that component.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "CHARGEMESH_"
PROFILE_DEV = "dev"
PROFILE_PRODUCTION = "production"
# librdkafka writes its log lines (every failed connect, many a second) straight to stderr unless
# given a Python logger; through this one they stay silent unless the process configures
# logging (a foreground sink, `chargemesh --debug`).
KAFKA_CLIENT_LOGGER = logging.getLogger("chargemesh.kafka")
KAFKA_CLIENT_LOGGER.addHandler(logging.NullHandler())


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Settings:
    state_dir: Path = Path(".chargemesh")
    # Kafka. Empty bootstrap = use the embedded broker on ``kafka_port``.
    kafka_bootstrap: str = ""
    kafka_port: int = 19092
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    partitions: int = 4
    replication_factor: int = 1
    # Consumer-group join costs about half the session timeout (STACK.md); keep it low embedded.
    session_timeout_ms: int = 6000
    # ClickHouse. Empty host = use the embedded server on the ports below.
    clickhouse_host: str = ""
    clickhouse_port: int = 19000
    clickhouse_http_port: int = 18123
    clickhouse_database: str = "chargemesh"
    clickhouse_user: str = "default"
    clickhouse_password: str = ""
    # Optional Confluent Schema Registry framing (empty = Avro single-object encoding).
    schema_registry_url: str = ""
    # Longest a consumer fetch waits for data (Faust's own default is 1500 ms).
    consumer_fetch_wait_ms: int = 20
    # Faust worker web port base (each worker needs its own port).
    worker_web_port: int = 16066
    # Trust anchors (root authorities) of this deployment: JSON list of
    # {"authority_id", "public_key_hex"}. Empty = <state_dir>/trust_anchors.json.
    trust_anchors_file: str = ""
    # The key of the deployment's PROCESSOR credential (governance-issued; every worker of the
    # deployment shares the file), signing the records the processors derive. Empty =
    # <state_dir>/processor-key.json (written by `chargemesh up`'s dev governance).
    processor_key_file: str = ""
    # The key of the deployment's CHECKPOINT credential (a key of its own, never the processors'),
    # signing the Merkle checkpoints. Empty = <state_dir>/checkpoint-key.json.
    checkpoint_key_file: str = ""
    # How trust is set up (issue 15, hole 8). "dev": `chargemesh up` creates a development root
    # anchor whose private keys sit in <state_dir>/dev-governance/ and says so; "production":
    # it never does, the anchors are only what `chargemesh anchors add` (or the file
    # TRUST_ANCHORS_FILE names) lists. Empty = dev for the embedded broker, else production.
    profile: str = ""

    @property
    def trust_profile(self) -> str:
        """``PROFILE_DEV`` or ``PROFILE_PRODUCTION`` (see ``profile``)."""
        profile = self.profile or (PROFILE_DEV if self.kafka_embedded else PROFILE_PRODUCTION)
        if profile not in (PROFILE_DEV, PROFILE_PRODUCTION):
            raise ConfigError(f"{ENV_PREFIX}PROFILE = {self.profile!r}: set {PROFILE_DEV!r} or "
                              f"{PROFILE_PRODUCTION!r}, or unset it")
        return profile

    @property
    def kafka_embedded(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def clickhouse_embedded(self) -> bool:
        return not self.clickhouse_host

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    @property
    def clickhouse_address(self) -> tuple[str, int]:
        return (self.clickhouse_host or "127.0.0.1", self.clickhouse_port)

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by producers, consumers and the admin client."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
            "logger": KAFKA_CLIENT_LOGGER,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username
            conf["sasl.password"] = self.kafka_sasl_password
        return conf

    @property
    def trust_anchors_path(self) -> Path:
        return Path(self.trust_anchors_file) if self.trust_anchors_file else (
            self.state_dir / "trust_anchors.json")

    @property
    def processor_key_path(self) -> Path:
        return Path(self.processor_key_file) if self.processor_key_file else (
            self.state_dir / "processor-key.json")

    @property
    def checkpoint_key_path(self) -> Path:
        return Path(self.checkpoint_key_file) if self.checkpoint_key_file else (
            self.state_dir / "checkpoint-key.json")

    def as_environ(self) -> dict[str, str]:
        """These settings as CHARGEMESH_* variables, for child processes (workers, sinks)."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name))
                for f in dataclasses.fields(self)}

    def with_overrides(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def _coerce(field: dataclasses.Field[Any], raw: Any, source: str) -> Any:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    if kind == "int":
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{source} = {raw!r} is not an integer: set a number, or unset it"
                              ) from None
    if kind == "Path":
        return Path(str(raw))
    return str(raw)


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: Path | None = None
) -> Settings:
    """Build settings from defaults, then the TOML file, then the environment."""
    env = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    state_dir = Path(env.get(ENV_PREFIX + "STATE_DIR", ".chargemesh"))
    path = config_file or (
        Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None
    )
    if path is None and (state_dir / "chargemesh.toml").is_file():
        path = state_dir / "chargemesh.toml"
    if path is not None:
        for key, raw in _read_toml(path).items():
            if key in fields:
                values[key] = _coerce(fields[key], raw, f"{key} in {path}")
    for name, field in fields.items():
        raw_env = env.get(ENV_PREFIX + name.upper())
        if raw_env is not None:
            values[name] = _coerce(field, raw_env, ENV_PREFIX + name.upper())
    return Settings(**values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read the settings file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the settings file {path} is not TOML: {exc}") from exc
