"""The ``relayfleet`` command as a user runs it: a real process, its flags, env and output."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess

import pytest

from relay.protocol.keys import DiscoPrivateKey
from tests.relay.relay_process import RELAYFLEET, RelayProcess


def run(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RELAYFLEET, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def new_keys() -> list[str]:
    return [str(DiscoPrivateKey.generate().public) for _ in range(2)]


def test_help_lists_the_subcommands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("relay", "demo", "keygen"):
        assert command in result.stdout


def test_relay_help_names_each_flags_environment_variable():
    result = run("relay", "--help")
    assert result.returncode == 0
    for name in ("RELAYFLEET_PORT", "RELAYFLEET_API_LISTEN", "RELAYFLEET_BIND_LIFETIME"):
        assert name in result.stdout


async def test_relay_process_serves_allocations_and_stops_on_sigterm():
    relay = await RelayProcess.start("--addr", "127.0.0.1", "--addr", "::1")
    assert set(relay.ready) == {"ready", "udp_port", "api", "server_disco"}
    status, body = await relay.allocate(new_keys())
    assert status == 200
    port = relay.ready["udp_port"]
    assert body["AddrPorts"] == [f"127.0.0.1:{port}", f"[::1]:{port}"]
    assert body["ServerDisco"] == relay.ready["server_disco"]
    assert (body["BindLifetime"], body["SteadyStateLifetime"]) == ("30s", "5m0s")
    code, _ = await relay.stop()
    assert code == 0


async def test_environment_sets_flags_and_flags_win():
    env = {
        "RELAYFLEET_BIND_LIFETIME": "1m30s",
        "RELAYFLEET_STEADY_STATE_LIFETIME": "10m",
        "RELAYFLEET_ADDR": "192.0.2.1, 2001:db8::1",
        "RELAYFLEET_MAX_ENDPOINTS": "1",
    }
    relay = await RelayProcess.start("--steady-state-lifetime", "90s", env=env)
    try:
        status, body = await relay.allocate(new_keys())
        assert status == 200
        assert body["BindLifetime"] == "1m30s"
        assert body["SteadyStateLifetime"] == "1m30s"
        port = relay.ready["udp_port"]
        assert body["AddrPorts"] == [f"192.0.2.1:{port}", f"[2001:db8::1]:{port}"]
        status, text = await relay.allocate(new_keys())
        assert status == 503 and "no VNI free" in text
    finally:
        await relay.stop()


async def test_key_file_keeps_the_server_key_across_restarts(tmp_path):
    key_file = tmp_path / "relay.key"
    first = await RelayProcess.start("--key-file", str(key_file))
    _, first_log = await first.stop()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = await RelayProcess.start("--key-file", str(key_file))
    _, second_log = await second.stop()
    assert first.ready["server_disco"] == second.ready["server_disco"]
    secret = key_file.read_text().split("privkey:")[1][:64]
    assert secret not in first_log + second_log + json.dumps(first.ready)


def test_corrupt_key_file_is_a_clear_error(tmp_path):
    key_file = tmp_path / "relay.key"
    key_file.write_text("disco-private-key: privkey:nothex\n")
    result = run("relay", "--port", "0", "--api-listen", "127.0.0.1:0", "--key-file", str(key_file))
    assert result.returncode == 1
    assert "relay.key" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--bind-lifetime", "5x"], {}, "invalid duration"),
        (["--bind-lifetime", "0s"], {}, "must be a positive duration"),
        (["--port", "70000"], {}, "not a port number"),
        (["--api-listen", "::1:80"], {}, "brackets"),
        (["--addr", "relay.example"], {}, "not an IP address"),
        (["--store", "postgres://u:secret@db"], {}, "use 'memory' or a URL of"),
        (["--store", "redis+cluster://:secret@"], {}, "no host"),
        (["--name", "relay{a}"], {}, "without braces"),
        ([], {"RELAYFLEET_PORT": "abc"}, "RELAYFLEET_PORT"),
    ],
)
def test_bad_flags_and_env_are_refused_with_a_reason(args, env, message):
    result = run("relay", *args, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "secret" not in result.stderr


def test_a_port_in_use_is_a_clear_error():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run(
            "relay", "--listen", "127.0.0.1", "--port", str(port), "--api-listen", "127.0.0.1:0"
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_keygen_prints_a_matching_key_pair():
    result = run("keygen")
    assert result.returncode == 0
    private_text, public_text = result.stdout.split()
    assert str(DiscoPrivateKey.parse(private_text).public) == public_text
    as_json = json.loads(run("keygen", "-o", "json").stdout)
    assert str(DiscoPrivateKey.parse(as_json["private"]).public) == as_json["public"]


def test_keygen_writes_a_relay_key_file_once(tmp_path):
    key_file = tmp_path / "relay.key"
    result = run("keygen", "--key-file", str(key_file))
    assert result.returncode == 0
    assert result.stdout.startswith("discokey:")
    assert "privkey:" not in result.stdout
    assert "privkey:" in key_file.read_text()
    again = run("keygen", "--key-file", str(key_file))
    assert again.returncode == 1 and "exists" in again.stderr


@pytest.mark.parametrize("protocol", ["0", "1"])
@pytest.mark.parametrize("family", [[], ["--ipv6"]], ids=["ipv4", "ipv6"])
def test_demo_runs_the_whole_story(family, protocol):
    result = run("demo", *family, "--protocol", protocol, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"protocol version {protocol}" in result.stdout
    assert "1000/1000 packets relayed" in result.stdout
    assert "1 data_from_unknown_source" in result.stdout
    assert "result       OK" in result.stdout
