"""How a ``chargemesh`` command fails: one line, no traceback, unless asked for.

An expected failure (a service that is down or refuses, a port in use, a missing or unreadable
file, bad settings, one of chargemesh's own ``...Error``\\ s) prints exactly one line on stderr::

    chargemesh ledger show: error: ClickHouse at 127.0.0.1:19000 refused the connection: is
    the stack up? run `chargemesh up` (...)

and exits 1 (click's usage errors keep their own message and exit 2). ``--debug`` (or
``CHARGEMESH_DEBUG=1``) prints the traceback after that line and lets the client libraries
log. Anything else is a bug: an "internal error" line, then the traceback, always.

:class:`ChargemeshGroup` is the ``chargemesh`` group's class; it handles every subcommand's
failure in one place (``invoke``) and records which subcommand ran, for the line's prefix.
"""

from __future__ import annotations

import errno
import logging
import os
import traceback
from collections.abc import Iterator
from typing import Any

import click
from chargemesh.infra.config import ENV_PREFIX, Settings
from chargemesh.infra.stack.preflight import (
    ServiceUnavailableError,
    broker_problem,
    clickhouse_problem,
)
from clickhouse_driver import errors as ch_errors
from confluent_kafka import KafkaException

DEBUG_ENV = ENV_PREFIX + "DEBUG"
EXIT_FAILED = 1
# Keeps a message with a log tail (e.g. a server that exited at start) to one readable line;
# --debug prints the whole of it with the traceback.
ERROR_LINE_CHARS_MAX = 1_000
CAUSE_CHAIN_MAX = 16
_PATH_KEY = "chargemesh.command_path"
# Loggers that print connection failures a command reports itself: clickhouse_driver logs every
# refused connection with its traceback; librdkafka's lines reach Python logging through
# ``config.KAFKA_CLIENT_LOGGER``. Quiet unless --debug; the first one even where a command
# configures logging for itself (the foreground sink), the others print there.
UNPROPAGATED_LOGGERS = ("clickhouse_driver",)
QUIET_LOGGERS = (*UNPROPAGATED_LOGGERS, "chargemesh.kafka")
# Project errors that mean "a bug", not "the world is not as the command needs it".
_INTERNAL_PROJECT_ERRORS = ("InvariantError",)
DEBUG_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DEBUG_HANDLER = "chargemesh_debug_handler"



class OpsError(RuntimeError):
    """An operation could not be done; the message says what to do."""


def configure_logging(debug: bool) -> None:
    """Without --debug, client libraries print nothing (the command reports failures itself);
    with it, their warnings go to stderr. The root logger is left alone either way: a command
    that configures logging (the foreground worker and sink) still does."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())  # so not `logging.lastResort` either
        logger.propagate = name not in UNPROPAGATED_LOGGERS
        if debug and not any(getattr(h, _DEBUG_HANDLER, False) for h in logger.handlers):
            handler = logging.StreamHandler()
            handler.setLevel(logging.WARNING)
            handler.setFormatter(logging.Formatter(DEBUG_LOG_FORMAT))
            setattr(handler, _DEBUG_HANDLER, True)
            logger.addHandler(handler)
            logger.propagate = False  # printed here, not twice


class ChargemeshGroup(click.Group):
    """A click group whose subcommands fail with one line (see the module docstring)."""

    group_class = type  # `@cli.group()` makes ChargemeshGroups too: they record the path

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            ctx.meta.setdefault(_PATH_KEY, []).append(command.name or name or "")
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.parent is not None:
            return super().invoke(ctx)
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.UsageError):
            raise
        except click.ClickException as exc:
            _report(ctx, _message_of(ctx, exc) or exc.format_message(), exc, internal=False)
            raise click.exceptions.Exit(exc.exit_code) from None
        except Exception as exc:  # noqa: BLE001 - the one place every failure is reported
            message = _message_of(ctx, exc)
            _report(ctx, message or _internal_message(exc), exc, internal=message is None)
            raise click.exceptions.Exit(EXIT_FAILED) from None


def command_path(ctx: click.Context) -> str:
    """``chargemesh ledger show`` for the subcommand that ran (as far as it was resolved)."""
    return " ".join([ctx.info_name or "chargemesh", *ctx.meta.get(_PATH_KEY, [])])


def _report(ctx: click.Context, message: str, exc: BaseException, internal: bool) -> None:
    # The group's --debug option (its envvar is DEBUG_ENV); the environment alone if the
    # failure came before the options were parsed.
    debug = bool(ctx.params.get("debug", os.environ.get(DEBUG_ENV, "") not in ("", "0")))
    kind = "internal error" if internal else "error"
    line = one_line(message)
    if len(line) > ERROR_LINE_CHARS_MAX and not debug:
        line = line[:ERROR_LINE_CHARS_MAX] + " ... (all of it: --debug)"
    click.echo(f"{command_path(ctx)}: {kind}: {line}", err=True)
    if internal or debug:
        click.echo("".join(traceback.format_exception(exc)).rstrip("\n"), err=True)


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _internal_message(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}. This is a bug in chargemesh: please report it with "
            "the traceback below")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from (or while handling), outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < CAUSE_CHAIN_MAX:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        else:
            current = None if current.__suppress_context__ else current.__context__


def _message_of(ctx: click.Context, exc: BaseException) -> str | None:
    """The line for an expected failure; None for a bug.

    A service that did not answer is named the same way whatever wrapped the client's error
    (``OpsError("ClickHouse ... did not answer: Code: 210 ...")`` reads as the refused
    connection it is, with what to do); other expected errors speak for themselves."""
    settings = ctx.obj if isinstance(ctx.obj, Settings) else None
    if settings is not None:
        for cause in _causes(exc):
            if isinstance(cause, ServiceUnavailableError):
                return str(cause)  # a probe's own sentence (it knows how long it waited)
            problem = _service_problem(settings, cause)
            if problem is not None:
                return problem
    if isinstance(exc, click.ClickException):
        return exc.format_message()
    if isinstance(exc, OSError):
        return os_problem(exc)
    if isinstance(exc, (ch_errors.Error, KafkaException)):
        return str(exc)  # no settings to name the service by (they failed to load)
    if _is_project_error(exc):
        return str(exc) or type(exc).__name__
    return None


def _service_problem(settings: Settings, exc: BaseException) -> str | None:
    if isinstance(exc, ch_errors.Error) or (
            isinstance(exc, (OSError, EOFError)) and _raised_in(exc, "clickhouse_driver")):
        return clickhouse_problem(settings, exc)
    return broker_problem(settings, exc)


def _raised_in(exc: BaseException, package: str) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"/{package}/" in tb.tb_frame.f_code.co_filename


def _is_project_error(exc: BaseException) -> bool:
    kind = type(exc)
    return (kind.__module__.startswith("chargemesh.") and kind.__name__.endswith("Error")
            and kind.__name__ not in _INTERNAL_PROJECT_ERRORS)


def os_problem(exc: OSError) -> str:
    """A file or network error of the operating system, said plainly, with what to do."""
    name = f" {exc.filename}" if exc.filename else ""
    if exc.filename is None and exc.args and len(exc.args) == 1:
        return str(exc)  # raised by chargemesh with its own sentence
    if isinstance(exc, FileNotFoundError):
        return (f"no such file or directory:{name}: check the path (or the setting that names "
                f"it, e.g. {ENV_PREFIX}TRUST_ANCHORS_FILE, {ENV_PREFIX}PROCESSOR_KEY_FILE)")
    if isinstance(exc, PermissionError):
        return f"permission denied:{name}: check the file's owner and mode"
    if exc.errno == errno.EADDRINUSE:
        return (f"a port is already in use ({exc.strerror}): stop what holds it, or pick "
                f"other ports with {ENV_PREFIX}KAFKA_PORT / {ENV_PREFIX}CLICKHOUSE_PORT / "
                f"{ENV_PREFIX}CLICKHOUSE_HTTP_PORT / {ENV_PREFIX}WORKER_WEB_PORT")
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused ({exc}): is the stack up? run `chargemesh up`"
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc}): check `chargemesh status`"
    return f"{exc.strerror or exc}:{name}"
