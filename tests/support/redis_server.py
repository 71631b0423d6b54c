"""A real redis-server for the tests, on a free loopback port in a temporary directory.

DESIGN.md asks for tests against Debian's redis-server, never a mock. A
:class:`RedisServer` runs one as a child process, waits until it answers, and
can stop it (SIGTERM, SIGKILL), pause it (SIGSTOP) and start it again on the
same port and directory, which is how the persistence and outage tests work.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.ports import free_port
from tests.support.waiting import wait_until_sync

NOT_INSTALLED = (
    "redis-server is not installed: run scripts/build-test-deps (it installs Debian's redis-server)"
)


def require_redis_server() -> str:
    """The redis-server executable; fails the test (never skips it) when it is missing."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail(NOT_INSTALLED, pytrace=False)
    return path


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command; also the CA."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed: apt-get install openssl", pytrace=False)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class RedisServer:
    """One redis-server on 127.0.0.1; ``with`` starts it and stops it.

    Without persistence unless ``args`` ask for it; ``password`` sets
    ``requirepass``; ``tls`` (certificate, key) serves TLS only.
    """

    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        tls: tuple[Path, Path] | None = None,
        args: tuple[str, ...] = ("--save", "", "--appendonly", "no"),
    ) -> None:
        self.executable = require_redis_server()
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.args = args
        self.log = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._paused = False

    def url(self, db: int = 0, **query: str | float) -> str:
        """This server's URL, with password, database and redis-py options."""
        scheme = "rediss" if self.tls else "redis"
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls:
            query = {"ssl_ca_certs": str(self.tls[0]), **query}
        tail = f"?{urlencode(query)}" if query else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}{tail}"

    def _command(self) -> list[str]:
        command = [self.executable, "--bind", "127.0.0.1", "--dir", str(self.directory)]
        command += ["--logfile", str(self.log), "--daemonize", "no"]
        if self.tls:
            cert, key = self.tls
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            command += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            command += ["--tls-ca-cert-file", str(cert)]
        else:
            command += ["--port", str(self.port)]
        if self.password:
            command += ["--requirepass", self.password]
        return command + list(self.args)

    def client(self, db: int = 0) -> redis.Redis:
        """A plain synchronous client, failing at once rather than retrying."""
        return redis.Redis.from_url(
            self.url(db),
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )

    def _ready(self, client: redis.Redis) -> bool:
        """Whether the started server is ready for the tests: answering, its data loaded."""
        return client.info("persistence")["loading"] == 0

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers and has loaded its data."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        with self.client() as client:
            try:
                wait_until_sync(
                    lambda: self._ready_unless_exited(client),
                    f"redis-server on port {self.port} to answer",
                    timeout=timeout,
                    interval=0.005,
                )
            except TimeoutError:
                self.stop(signal.SIGKILL)
                raise

    def _ready_unless_exited(self, client: redis.Redis) -> bool:
        """Whether the server is ready; RuntimeError with its stderr if it exited instead."""
        if self.process.poll() is not None:
            stderr = self.process.stderr.read().decode(errors="replace")
            self.process = None
            raise RuntimeError(
                f"redis-server exited at start on port {self.port}:\n{stderr}\n{self._log_tail()}"
            )
        try:
            return self._ready(client)
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Send ``sig`` and wait for the process to end; SIGKILL it if it will not."""
        process, self.process = self.process, None
        if process is None:
            return
        if self._paused and sig != signal.SIGKILL:
            process.send_signal(signal.SIGCONT)
        self._paused = False
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise RuntimeError(f"redis-server ignored {sig.name} for {timeout} s") from None
        finally:
            if process.stderr:
                process.stderr.close()

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections open, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
