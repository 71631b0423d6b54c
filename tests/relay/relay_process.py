"""``relayfleet relay`` as a child process: started, asked, stopped or killed, as users do."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess

import aiohttp

from tests.paths import RELAYFLEET

READY_TIMEOUT = 20


class RelayProcess:
    def __init__(self, process: asyncio.subprocess.Process, ready: dict) -> None:
        self.process = process
        self.ready = ready

    @classmethod
    async def start(cls, *args: str, env: dict | None = None) -> RelayProcess:
        process = await asyncio.create_subprocess_exec(
            RELAYFLEET,
            "relay",
            "--listen",
            "127.0.0.1",
            "--port",
            "0",
            "--api-listen",
            "127.0.0.1:0",
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
        if not line:
            await process.wait()
            raise AssertionError((await process.stderr.read()).decode())
        return cls(process, json.loads(line))

    async def allocate(self, keys: list[str]) -> tuple[int, dict | str]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://{self.ready['api']}/v0/relay/endpoint", json={"DiscoKeys": keys}
            ) as response,
        ):
            if response.status == 200:
                return 200, await response.json()
            return response.status, await response.text()

    @property
    def relay(self) -> tuple[str, int]:
        return "127.0.0.1", self.ready["udp_port"]

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        _, stderr = await asyncio.wait_for(self.process.communicate(), READY_TIMEOUT)
        return self.process.returncode, stderr.decode()
