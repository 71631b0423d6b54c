"""The relays' secrets never leave their key files: a full run, then a grep of everything.

Two relays (one logging text, one JSON, both at debug level) start from key
files whose disco private key and challenge secret the test knows. An
operator (text logs, then a second one with JSON logs) places RelayEndpoints
on them; a pair binds and relays data, one endpoint expires, one is deleted,
the relays' HTTP API is asked everything it answers. Then every place the
run wrote to is searched for either secret in every encoding we could
imagine it leaking in: the relay and operator logs, every RelayEndpoint's
YAML, the Events, the metrics of relays and operators, every API answer,
`relayfleet status`, and everything in Redis. The public key is asserted to
be where it belongs, so that the grep is known to read the right data.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import aiohttp
import redis

from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.shells.keyfile import RelaySecrets
from relay.shells.peer import UdpPeer
from tests.relay.relay_process import RelayProcess
from tests.relay_operator.e2e_support import (
    RELAYFLEET,
    endpoint_yaml,
    get,
    new_keys,
    phase_is,
)
from tests.support.waiting import wait_until

RELAYS = {"relay-a": "text", "relay-b": "json"}
NEEDLE = 16  # characters: 8 bytes in hex, 12 in base64; catches truncated forms too


def base64_needles(label: str, data: bytes) -> dict[str, str]:
    """``data`` in base64 (standard and URL-safe) as it reads inside a longer base64 text,
    for each of the three alignments, trimmed of the characters its neighbours change."""
    needles = {}
    for shift in range(3):
        for variant, encode in (
            ("base64", base64.b64encode),
            ("base64url", base64.urlsafe_b64encode),
        ):
            encoded = encode(bytes(shift) + data).decode()
            trimmed = encoded[4 if shift else 0 :]
            needles[f"{label} {variant}@{shift}"] = trimmed[:NEEDLE]
    return needles


def secret_needles(label: str, raw: bytes, text_form: str) -> dict[str, str]:
    """Every encoding of one secret we search for; ``text_form`` is how its file writes it."""
    needles = {
        f"{label} hex": raw.hex()[:NEEDLE],
        f"{label} HEX": raw.hex().upper()[:NEEDLE],
        f"{label} raw bytes": raw.decode("latin-1"),
        f"{label} bytes repr": repr(raw)[2 : 2 + 4 * 8],
        f"{label} text form": text_form,
    }
    needles |= base64_needles(label, raw)
    needles |= base64_needles(f"{label} text form", text_form.encode())
    return needles


def redis_contents(client: redis.Redis) -> str:
    """Every key and value in Redis, as latin-1 text so that raw bytes can be found too."""
    out: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        out.append(key)
        if kind == "string":
            out.append(client.get(key))
        elif kind == "hash":
            for field, value in client.hgetall(key).items():
                out += [field, value]
        elif kind == "set":
            out += list(client.smembers(key))
        elif kind == "zset":
            out += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "list":
            out += client.lrange(key, 0, -1)
        else:
            raise AssertionError(f"unexpected Redis type {kind} of {key!r}")
    return b"\n".join(out).decode("latin-1")


async def api_answers(relay: RelayProcess, server_key: str) -> dict[str, str]:
    """Every kind of answer the relay's HTTP API gives: allocation, refusals, table, health."""
    base = f"http://{relay.ready['api']}"
    keys = [str(k.public) for k in new_keys()]
    requests = {
        "POST allocation": ("POST", "/v0/relay/endpoint", {"DiscoKeys": keys}),
        "POST own key (400)": ("POST", "/v0/relay/endpoint", {"DiscoKeys": [keys[0], server_key]}),
        "POST malformed (400)": ("POST", "/v0/relay/endpoint", {"DiscoKeys": ["privkey:00"]}),
        "GET endpoints": ("GET", "/v0/relay/endpoints", None),
        "GET healthz": ("GET", "/healthz", None),
        "GET metrics": ("GET", "/metrics", None),
    }
    answers = {}
    async with aiohttp.ClientSession() as session:
        for name, (method, path, body) in requests.items():
            async with session.request(method, base + path, json=body) as response:
                answers[name] = (
                    f"{response.status} {dict(response.headers)}\n{await response.text()}"
                )
    assert answers["POST allocation"].startswith("200")
    assert answers["POST own key (400)"].startswith("400")
    return answers


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


async def bind_and_relay(status: dict, keys: list[DiscoPrivateKey]) -> None:
    server = DiscoPublicKey.parse(status["serverDisco"])
    clients = [RelayClient(k, server, status["vni"], protocol=0) for k in keys]
    host, port = status["addrPorts"][0].rsplit(":", 1)
    address = (host, int(port))
    peers = [await UdpPeer.open(), await UdpPeer.open()]
    try:
        for client, peer in zip(clients, peers, strict=True):
            peer.send(client.bind(), address)
            peer.send(client.answer(await peer.receive()), address)
        for sender in (0, 1):
            peers[sender].send(clients[sender].data(b"payload"), address)
            assert clients[1 - sender].read_data(await peers[1 - sender].receive()) == b"payload"
    finally:
        for peer in peers:
            peer.close()


async def start_relay(
    control_plane, redis_server, name: str, key_file: Path, log_format: str, logs: Path
) -> RelayProcess:
    """A relay logging all it can (debug level), in ``log_format``, to ``logs/<name>.log``."""
    return await RelayProcess.start(
        "--store", redis_server.url(), "--name", name, "--key-file", str(key_file),
        "--addr", "127.0.0.1", "--heartbeat-interval", "300ms",
        "--kubeconfig", str(control_plane.kubeconfig), "--report-interval", "200ms",
        "--bind-lifetime", "8s", "--log-level", "debug", "--log-format", log_format,
        # It allocates through the API too, to see the secrets on that path.
        "--api-allocations", "on",
        log=logs / f"{name}.log",
    )  # fmt: skip


async def test_no_secret_appears_anywhere_after_a_full_run(
    crd, kube_namespace, start_operator, redis_server, tmp_path
):
    ns = kube_namespace
    secrets = {name: RelaySecrets.generate() for name in RELAYS}
    key_files = {}
    for name, relay_secrets in secrets.items():
        key_files[name] = tmp_path / f"{name}.key"
        key_files[name].write_text(relay_secrets.to_text())
        key_files[name].chmod(0o600)
    relays = {
        name: await start_relay(crd, redis_server, name, key_files[name], log_format, tmp_path)
        for name, log_format in RELAYS.items()
    }
    haystacks: dict[str, str] = {}

    def kubectl(*args: str, **kwargs: str) -> str:
        return crd.kubectl("-n", ns, *args, **kwargs).stdout

    try:
        operator_text = start_operator("operator-text", "--standalone")

        def create(name: str, relay: str | None) -> list[DiscoPrivateKey]:
            keys = new_keys()
            kubectl(
                "apply", "-f", "-", input=endpoint_yaml(name, [str(k.public) for k in keys], relay)
            )
            return keys

        for relay in relays:  # bound first, within the bind lifetime of its allocation
            keys = create(f"bound-{relay}", relay)
            allocated = await wait_until(
                phase_is(crd, ns, f"bound-{relay}", "Allocated"), relay, log=operator_text.log
            )
            await bind_and_relay(allocated["status"], keys)
        for relay in relays:
            for role in ("expire", "delete"):
                create(f"{role}-{relay}", relay)
                await wait_until(phase_is(crd, ns, f"{role}-{relay}", "Allocated"), role)
        for relay in relays:
            await wait_until(phase_is(crd, ns, f"bound-{relay}", "Bound"), f"bound-{relay} Bound")
        for name, relay in relays.items():
            answers = await api_answers(relay, relay.ready["server_disco"])
            haystacks |= {f"{name} API {what} (1)": text for what, text in answers.items()}
        haystacks["RelayEndpoints YAML (1)"] = kubectl("get", "rep", "-o", "yaml")
        haystacks["operator-text metrics"] = fetch(operator_text.metrics_url)
        operator_text.stop()

        operator_json = start_operator("operator-json", "--standalone", "--log-format", "json")
        for relay in relays:
            await wait_until(phase_is(crd, ns, f"expire-{relay}", "Expired"), f"expire-{relay}")
            kubectl("delete", "rep", f"delete-{relay}", "--wait=true", "--timeout=30s")
            assert get(crd, ns, f"delete-{relay}") == {}
        create("late", None)
        await wait_until(phase_is(crd, ns, "late", "Allocated"), "late", log=operator_json.log)

        for name, relay in relays.items():
            answers = await api_answers(relay, relay.ready["server_disco"])
            haystacks |= {f"{name} API {what} (2)": text for what, text in answers.items()}
            haystacks[f"{name} ready line"] = json.dumps(relay.ready)
        haystacks["RelayEndpoints YAML (2)"] = kubectl("get", "rep", "-o", "yaml")
        haystacks["Events"] = kubectl("get", "events", "-o", "yaml")
        haystacks["operator-json metrics"] = fetch(operator_json.metrics_url)
        env = {**os.environ, "KUBECONFIG": str(crd.kubeconfig)}
        for output in ("json", "text"):
            result = subprocess.run(
                [RELAYFLEET, "status", "--store", redis_server.url(), "-o", output],
                capture_output=True, text=True, env=env, timeout=60,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            haystacks[f"relayfleet status -o {output}"] = result.stdout + result.stderr
        operator_json.stop()
    finally:
        exits = {}
        for name, relay in relays.items():
            exits[name], haystacks[f"{name} log ({RELAYS[name]})"] = await relay.stop()
    assert exits == dict.fromkeys(RELAYS, 0)
    haystacks["operator-text log (text)"] = operator_text.log.read_text()
    haystacks["operator-json log (json)"] = operator_json.log.read_text()
    haystacks["Redis"] = redis_contents(redis_server.client())

    needles = {}
    for name, relay_secrets in secrets.items():
        private = relay_secrets.private_key
        challenge = relay_secrets.challenge_secret
        needles |= secret_needles(f"{name} private key", private.raw, private.text())
        needles |= secret_needles(f"{name} challenge secret", challenge, challenge.hex())
        # the needles are right: the key file holds the secrets in their text forms, and
        # a Kubernetes Secret holding the file (base64) is caught by a base64 needle
        file_bytes = key_files[name].read_bytes()
        assert private.text() in file_bytes.decode() and challenge.hex() in file_bytes.decode()
        encoded = base64.b64encode(file_bytes).decode()
        text_form_needles = base64_needles("", private.text().encode()).values()
        assert any(needle in encoded for needle in text_form_needles)

    leaks = [
        f"{secret} in {where}"
        for where, text in haystacks.items()
        for secret, needle in needles.items()
        if needle in text
    ]
    assert leaks == []

    # ... and the grep read the right data: the public keys are where they belong
    for name, relay in relays.items():
        public = relay.ready["server_disco"]
        assert public == str(secrets[name].private_key.public)
        expected = [
            f"{name} log ({RELAYS[name]})",
            f"{name} API POST allocation (1)",
            f"{name} API GET endpoints (2)",
            f"{name} API GET metrics (2)",
            "RelayEndpoints YAML (2)",
            "relayfleet status -o json",
        ]
        for where in expected:
            assert public in haystacks[where], f"{public} not in {where}"
    json_log = haystacks["relay-b log (json)"].splitlines()
    assert json_log and all(json.loads(line)["message"] for line in json_log)
    operator_json_log = haystacks["operator-json log (json)"].splitlines()
    assert any(json.loads(line)["level"] for line in operator_json_log if line.startswith("{"))
    assert "Allocated" in haystacks["Events"] and "expire-relay-a" in haystacks["Events"]
    assert "relayfleet_operator_allocations_total" in haystacks["operator-json metrics"]
    assert ns in haystacks["operator-text log (text)"]
    assert "relayfleet:{relay-a}" in haystacks["Redis"]
    assert all(Path(key_files[name]).exists() for name in RELAYS)
