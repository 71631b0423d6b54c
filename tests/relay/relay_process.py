"""``relayfleet relay`` as a child process: started, asked, stopped or killed, as users do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import aiohttp

from tests.support.paths import RELAYFLEET

READY_TIMEOUT = 20


class RelayProcess:
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        ready: dict,
        log: Path | None = None,
        tmpdir: str | None = None,
    ) -> None:
        self.process = process
        self.ready = ready
        self.log = log
        self.tmpdir = tmpdir
        """The relay's TMPDIR (its workers' Unix sockets), removed at stop: a relay killed
        with SIGKILL cannot remove what it made there."""

    @classmethod
    async def start(
        cls,
        *args: str,
        env: dict | None = None,
        log: Path | None = None,
        wrapper: tuple[str, ...] = (),
        listen: str = "127.0.0.1",
    ) -> RelayProcess:
        """The relay, once ready; its stderr goes to ``log`` if given (for long, chatty runs:
        a pipe nobody reads fills up and blocks the relay), else to a pipe read at stop.
        ``wrapper`` runs it inside another command (``ip netns exec NS``). The relay
        inherits the environment but ``KUBECONFIG`` (which ``--report-status auto``
        honours): a test names the cluster it reports to, by flag or ``env``."""
        inherited = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        tmpdir = tempfile.mkdtemp(prefix="relayfleet-test-relay-")
        stderr = log.open("wb") if log is not None else subprocess.PIPE
        process = await asyncio.create_subprocess_exec(
            *wrapper,
            RELAYFLEET,
            "relay",
            "--listen",
            listen,
            "--port",
            "0",
            "--api-listen",
            "127.0.0.1:0",
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**inherited, "TMPDIR": tmpdir, **(env or {})},
        )
        if log is not None:
            stderr.close()
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
        if not line:
            await process.wait()
            shutil.rmtree(tmpdir, ignore_errors=True)
            error = log.read_bytes() if log is not None else await process.stderr.read()
            raise AssertionError(error.decode())
        return cls(process, json.loads(line), log, tmpdir)

    async def allocate(self, keys: list[str], token: str | None = None) -> tuple[int, dict | str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://{self.ready['api']}/v0/relay/endpoint",
                json={"DiscoKeys": keys},
                headers=headers,
            ) as response,
        ):
            if response.status == 200:
                return 200, await response.json()
            return response.status, await response.text()

    @property
    def relay(self) -> tuple[str, int]:
        return "127.0.0.1", self.ready["udp_port"]

    async def kill_as_a_container(self) -> tuple[int, str]:
        """SIGKILL to the relay and its workers at once, as when its pod's container is killed
        (its cgroup), rather than to the parent alone, whose workers then follow it."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [int(pid) for pid in children.read_text().split()] if children.exists() else []
        for pid in [self.process.pid, *pids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return await self.stop(signal.SIGKILL)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        _, stderr = await asyncio.wait_for(self.process.communicate(), READY_TIMEOUT)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self.log is not None:
            return self.process.returncode, self.log.read_text()
        return self.process.returncode, stderr.decode()
