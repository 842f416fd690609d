"""chargemesh: operator-free EV charging settlement on signed Avro events.

The import root maps onto the repository's top-level folders:
``chargemesh.schemas`` (Avro schemas and codec), ``chargemesh.streams`` (topics, signed
envelope, SDK), ``chargemesh.processors`` (pure domain logic and Faust agents),
``chargemesh.sinks`` (ClickHouse), ``chargemesh.infra`` (config, embedded stack, CLI).
"""

__version__ = "0.1.0"
