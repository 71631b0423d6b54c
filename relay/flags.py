"""Flags declared once: a config field names its flag, parser, default and help.

Each process has one frozen dataclass of settings (the relay's, the
operator's, ``relayfleet status``'s). A field made with :func:`flag` carries
everything about its command-line flag, and :func:`add_arguments` and
:func:`from_args` make the argparse flags and the config object from those
fields, so a setting is written in one place.

Every flag ``--some-flag`` can also be set by ``RELAYFLEET_SOME_FLAG``; a flag
given on the command line wins. A flag may also fall back on another
program's variable when its own is unset (``--kubeconfig`` on ``KUBECONFIG``,
as kubectl reads it). Nothing else in relay-fleet reads the environment: the
command passes it to :func:`add_arguments`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from relay.protocol.addresses import parse_host_port, parse_ip
from relay.protocol.durations import format_duration, parse_duration
from relay.store import DEFAULT_PREFIX, check_store_url

ENV_PREFIX = "RELAYFLEET_"
TRUE_WORDS = ("1", "true", "yes", "on")

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one config field is set from the command line and the environment."""

    name: str
    help: str
    parse: Callable[[str], Any] = str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    repeated: bool = False
    """May be given several times (the environment variable: comma-separated)."""
    switch: bool = False
    """Takes no value; the environment variable is true for 1, true, yes or on."""
    shown: str | None = None
    """The default as ``--help`` prints it; None prints none."""
    fallback_env: str | None = None
    """Another program's variable, read when ``RELAYFLEET_…`` is unset (``KUBECONFIG``)."""
    fallback_parse: Callable[[str], Any] | None = None
    """Makes the default from ``fallback_env``'s value; None leaves the default as it is."""

    @property
    def env(self) -> str:
        return env_name(self.name)


def env_name(flag: str) -> str:
    """``--some-flag`` → ``RELAYFLEET_SOME_FLAG``."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def flag(
    name: str,
    default: Any = None,
    *,
    help: str,
    parse: Callable[[str], Any] = str,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    repeated: bool = False,
    switch: bool = False,
    shown: str | None = None,
    default_factory: Callable[[], Any] | None = None,
    fallback_env: str | None = None,
    fallback_parse: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field set by ``name``. ``shown`` defaults to the default in flag form.

    ``fallback_env`` names a variable read when the flag's own is unset, its
    value turned into the default by ``fallback_parse`` (None: no default)."""
    if shown is None and default_factory is None and default not in (None, (), False):
        shown = format_duration(default) if parse is duration else str(default)
    spec = Flag(
        name, help, parse, metavar, choices, repeated, switch, shown, fallback_env, fallback_parse
    )
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={"flag": spec})
    return dataclasses.field(default=default, metadata={"flag": spec})


def flags_of(config: type) -> list[tuple[dataclasses.Field[Any], Flag]]:
    """The fields of a config class that have a flag, in declaration order."""
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(config) if "flag" in f.metadata]


def add_arguments(
    parser: argparse.ArgumentParser, config: type, environ: Mapping[str, str]
) -> None:
    """Add a flag per field of ``config``; a set environment variable becomes its default."""
    for field, spec in flags_of(config):
        default = _default(field)
        raw = environ.get(spec.env, "")
        if raw:
            try:
                default = _from_env(spec, raw)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                parser.error(f"{spec.env}: {exc}")
        elif spec.fallback_env and spec.fallback_parse and environ.get(spec.fallback_env):
            fallback = spec.fallback_parse(environ[spec.fallback_env])
            default = default if fallback is None else fallback
        env = spec.env + (f", else {spec.fallback_env}" if spec.fallback_env else "")
        text = f"{spec.help} [env {env}" + (f"; default {spec.shown}]" if spec.shown else "]")
        if spec.switch:
            parser.add_argument(
                spec.name, dest=field.name, action="store_true", default=default, help=text
            )
            continue
        parser.add_argument(
            spec.name,
            dest=field.name,
            default=list(default) if spec.repeated else default,
            type=spec.parse,
            choices=spec.choices,
            action="append" if spec.repeated else "store",
            metavar=spec.metavar,
            help=text,
        )


def from_args(config: type[C], args: argparse.Namespace) -> C:
    """The config object made from parsed arguments (repeated flags become tuples)."""
    values = {}
    for field, spec in flags_of(config):
        value = getattr(args, field.name)
        values[field.name] = tuple(value) if spec.repeated else value
    return config(**values)


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _from_env(spec: Flag, raw: str) -> Any:
    if spec.switch:
        return raw.strip().lower() in TRUE_WORDS
    if spec.repeated:
        return [spec.parse(part.strip()) for part in raw.split(",") if part.strip()]
    value = spec.parse(raw)
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"{raw!r}: choose from {', '.join(spec.choices)}")
    return value


# -- parsers: each raises ArgumentTypeError with a one-line reason ----------------------


def _argument(parse: Callable[[str], Any], text: str) -> Any:
    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def host_port(text: str) -> tuple[str, int]:
    return _argument(parse_host_port, text)


def ip(text: str) -> str:
    return _argument(parse_ip, text)


def duration(text: str) -> float:
    seconds = _argument(parse_duration, text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive duration")
    return seconds


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number, at least 1")
    return value


def count_up_to(limit: int) -> Callable[[str], int]:
    """A parser of whole numbers from 1 to ``limit``."""

    def parse(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= limit:
            raise argparse.ArgumentTypeError(f"{text!r}: must be a number from 1 to {limit}")
        return int(text)

    return parse


def integer(text: str) -> int:
    return _argument(int, text)


def store_url(text: str) -> str:
    _argument(check_store_url, text)
    return text


# -- flags several commands share, declared once here -----------------------------------

STORE_HELP = (
    "the fleet's Redis: redis://[:PASSWORD@]HOST[:PORT][/DB], rediss:// for TLS, "
    "unix://PATH, redis+cluster://HOST:PORT[,HOST:PORT...], "
    "redis+sentinel://HOST:PORT[,...]/SERVICE[/DB]"
)


def store_flag(default: str | None, help: str = STORE_HELP) -> Any:
    return flag("--store", default, parse=store_url, metavar="STORE", help=help)


def store_prefix_flag() -> Any:
    return flag(
        "--store-prefix",
        DEFAULT_PREFIX,
        metavar="PREFIX",
        help="prefix of every Redis key, so several fleets can share one Redis (relays and "
        "operator must use the same)",
    )


def log_level_flag() -> Any:
    return flag(
        "--log-level",
        "info",
        choices=("debug", "info", "warning", "error"),
        help="how much to log (to stderr)",
    )


def log_format_flag() -> Any:
    return flag(
        "--log-format",
        "text",
        choices=("text", "json"),
        help="log lines as plain text or as JSON objects",
    )
