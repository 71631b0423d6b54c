"""The relay's secrets: its disco private key and the key of its challenge MAC.

They live together in one key file (in Kubernetes, a mounted Secret) so that a
restarted relay keeps its ServerDisco and its challenges. The file is
``name: value`` lines; it is created with mode 0600 when missing. Nothing here
ever logs or prints a secret.
"""

from __future__ import annotations

import os
import secrets as _random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from relay.protocol.core import CHALLENGE_SECRET_LEN
from relay.protocol.keys import DiscoPrivateKey, InvalidKey

_PRIVATE_KEY = "disco-private-key"
_CHALLENGE_SECRET = "challenge-secret"


class KeyFileError(Exception):
    """The key file cannot be read or written."""


class SecretsText(Protocol):
    """Secrets that write themselves as key file text."""

    def to_text(self) -> str: ...


@dataclass(frozen=True)
class RelaySecrets:
    private_key: DiscoPrivateKey
    challenge_secret: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> RelaySecrets:
        return cls(DiscoPrivateKey.generate(), _random.token_bytes(CHALLENGE_SECRET_LEN))

    def to_text(self) -> str:
        return (
            "# relay-fleet relay secrets: keep private\n"
            f"{_PRIVATE_KEY}: {self.private_key.text()}\n"
            f"{_CHALLENGE_SECRET}: {self.challenge_secret.hex()}\n"
        )

    @classmethod
    def from_text(cls, text: str, origin: str = "key file") -> RelaySecrets:
        values = read_values(text, origin, (_PRIVATE_KEY, _CHALLENGE_SECRET))
        try:
            private_key = DiscoPrivateKey.parse(values[_PRIVATE_KEY])
        except InvalidKey as exc:
            raise KeyFileError(f"{origin}: {_PRIVATE_KEY}: {exc}") from None
        try:
            challenge_secret = bytes.fromhex(values[_CHALLENGE_SECRET])
        except ValueError:
            challenge_secret = b""
        if len(challenge_secret) != CHALLENGE_SECRET_LEN:
            raise KeyFileError(
                f"{origin}: {_CHALLENGE_SECRET} must be {2 * CHALLENGE_SECRET_LEN} hex digits"
            )
        return cls(private_key, challenge_secret)


def load_or_create(path: str | os.PathLike[str]) -> tuple[RelaySecrets, bool]:
    """The secrets in ``path``, created there (mode 0600) if it does not exist.

    Returns the secrets and whether the file was created.
    """
    return load_or_create_secret(path, RelaySecrets.from_text, RelaySecrets.generate)


_S = TypeVar("_S", bound=SecretsText)


def load_or_create_secret(
    path: str | os.PathLike[str], from_text: Callable[[str, str], _S], generate: Callable[[], _S]
) -> tuple[_S, bool]:
    """Secrets read from ``path`` with ``from_text``, or made by ``generate`` and written
    there (mode 0600, never over a file another process wrote first); and whether the file
    was created."""
    file = Path(path)
    try:
        return from_text(file.read_text(), str(file)), False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {file}: {exc.strerror}") from None
    created = generate()
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return from_text(file.read_text(), str(file)), False
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {file}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as out:
        out.write(created.to_text())
    return created, True


def read_values(text: str, origin: str, required: tuple[str, ...]) -> dict[str, str]:
    """The ``name: value`` lines of a key file (``#`` comments and blank lines skipped);
    raises KeyFileError naming the line or the missing names."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise KeyFileError(f"{origin}:{number}: expected 'name: value'")
        values[name.strip()] = value.strip()
    missing = [n for n in required if n not in values]
    if missing:
        raise KeyFileError(f"{origin}: missing {', '.join(missing)}")
    return values
