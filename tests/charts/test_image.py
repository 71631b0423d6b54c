"""The Dockerfile's command line and the chart's container settings, against the real CLI.

No container engine runs here: the ENTRYPOINT/CMD are parsed from the
Dockerfile and run through `relayfleet`'s own parser, and each rendered
container's args and RELAYFLEET_* environment (with the kubelet's $(VAR)
expansion and plausible downward-API values) must parse as the CLI would.
The Dockerfile must build on the public Python image and on the base that
scripts/build-images makes from Debian packages (tests/images checks what
that script builds), and run as the chart runs it.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from relay.cli import build_parser
from tests.charts.helm import ROOT, find, template
from tests.charts.test_render import VALUE_SETS
from tests.support.paths import RELAYFLEET


def _instruction(name: str) -> list[str]:
    lines = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith(name)
    ]
    assert len(lines) == 1, f"one {name} in the Dockerfile"
    return json.loads(lines[0][len(name) :].strip())


def test_dockerfile_entrypoint_is_relayfleet() -> None:
    entrypoint, cmd = _instruction("ENTRYPOINT"), _instruction("CMD")
    assert entrypoint == ["relayfleet"]
    result = subprocess.run(
        [str(RELAYFLEET), *cmd], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "relay" in result.stdout and "operator" in result.stdout


def test_dockerfile_is_non_root_multi_stage() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert "COPY --from=build /opt/relayfleet /opt/relayfleet" in text


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_base_is_an_argument() -> None:
    """Both stages on one base: the public Python image unless --build-arg PYTHON names another."""
    instructions = _instructions()
    assert ("ARG", "PYTHON=python:3.12-slim-bookworm") in instructions
    assert [args.split()[0] for name, args in instructions if name == "FROM"] == ["${PYTHON}"] * 2


def test_dockerfile_calls_python3() -> None:
    """The Debian-made base has python3 and no `python` command."""
    runs = " ; ".join(args for name, args in _instructions() if name == "RUN")
    assert "python3 -m venv" in runs
    assert not re.search(r"(^|[\s;&|(])python\s", runs), runs


def _run_stage_apt(tmp_path: Path, tools: dict[str, str]) -> tuple[int, list[str]]:
    """The run stage's RUN with apt-get in it, under sh with only `tools` (stubs) on PATH."""
    (script,) = [a for n, a in _instructions() if n == "RUN" and "apt-get" in a]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "calls"
    for tool, status in tools.items():
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >>{calls}\nexit {status}\n')
        stub.chmod(0o755)
    result = subprocess.run(
        ["/bin/sh", "-c", script], env={"PATH": str(bin_dir)}, capture_output=True, timeout=30
    )
    return result.returncode, calls.read_text().splitlines() if calls.exists() else []


def test_run_stage_uses_nft_and_ip_of_the_base(tmp_path: Path) -> None:
    """The Debian-made base has nft and ip already, and no apt lists: apt is not run."""
    status, calls = _run_stage_apt(tmp_path, {"nft": "0", "ip": "0"})
    assert (status, calls) == (0, [])


def test_run_stage_installs_nft_and_ip_with_apt_otherwise(tmp_path: Path) -> None:
    """On the public Python image, which lacks them, they come from apt."""
    status, calls = _run_stage_apt(tmp_path, {"apt-get": "0", "rm": "0"})
    assert status == 0
    assert calls[0] == "apt-get update"
    assert calls[1].startswith("apt-get install -y ")
    assert calls[1].split()[-2:] == ["nftables", "iproute2"]
    assert calls[2].startswith("rm -rf /var/lib/apt/lists/")
    status, _ = _run_stage_apt(tmp_path / "failing", {"apt-get": "100", "rm": "0"})
    assert status != 0


def test_image_runs_as_the_chart_runs_it() -> None:
    """65532:65532 as the chart's pods, no bytecode writes (read-only root), /tmp the one
    writable place, which the chart mounts in every relayfleet container."""
    instructions = _instructions()
    assert [a for n, a in instructions if n == "USER"][-1] == "65532:65532"
    env = " ".join(a for n, a in instructions if n == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env.split()
    assert [a for n, a in instructions if n == "WORKDIR"][-1] == "/tmp"
    objects = template()
    for kind, part in (("Deployment", "operator"), ("StatefulSet", "relay")):
        pod = find(objects, kind, f"rf-relay-fleet-{part}")["spec"]["template"]["spec"]
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
            65532,
            65532,
        )
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        (tmp,) = [v for v in pod["volumes"] if v["name"] == mounts["/tmp"]]
        assert "emptyDir" in tmp


def test_chart_image_is_the_dockerfile_image() -> None:
    operator = find(template(), "Deployment", "rf-relay-fleet-operator")
    image = operator["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "relayfleet:0.1.0"
    assert "docker build -t relayfleet:0.1.0 ." in (ROOT / "Dockerfile").read_text()


FIELDS = {
    "metadata.name": "rf-relay-fleet-relay-1",
    "metadata.namespace": "relays",
    "status.hostIP": "10.0.0.5",
    "metadata.labels['apps.kubernetes.io/pod-index']": "1",
}


def _environment(container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), item["value"])
        elif "fieldRef" in item["valueFrom"]:
            value = FIELDS[item["valueFrom"]["fieldRef"]["fieldPath"]]
        elif item["name"] == "RELAYFLEET_STORE":
            value = "redis://:pw@redis.example:6379/0"
        else:
            value = "s3cret"
        env[item["name"]] = value
    return env


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_containers_parse_with_the_cli(name: str) -> None:
    objects = template(VALUE_SETS[name])
    for kind, part in (("Deployment", "operator"), ("StatefulSet", "relay")):
        pod = find(objects, kind, f"rf-relay-fleet-{part}")["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = _environment(container)
        if "command" in container:  # the LoadBalancer mode's shell wrapper
            assert container["command"][:2] == ["/bin/sh", "-c"]
            assert container["command"][2].endswith("exec relayfleet relay")
            args, env["RELAYFLEET_ADDR"] = ["relay"], "203.0.113.7"
        else:
            args = container["args"]
        parsed = build_parser(env).parse_args(args)
        assert parsed.command == part
        assert parsed.log_format == "json"
        if part == "relay":
            assert parsed.name == "rf-relay-fleet-relay-1"
            assert parsed.key_file == "/etc/relayfleet/keys/rf-relay-fleet-relay-1.key"
            assert parsed.pod == "relays/rf-relay-fleet-relay-1"
            assert parsed.addrs and parsed.store.startswith("redis://")
            values = VALUE_SETS[name]
            assert parsed.metrics_listen == ("0.0.0.0", values.get("relays.metricsPort", 9090))
            api_on = bool(values.get("relays.api.enabled"))
            if api_on:
                assert parsed.api_listen == ("0.0.0.0", values.get("relays.api.port", 8080))
                assert parsed.api_allocations == values.get("relays.api.allocations", "auto")
            else:
                assert env["RELAYFLEET_API_LISTEN"] == "off"
                assert parsed.api_listen is None  # no API listener
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert str(Path(parsed.key_file).parent) in mounts
            # a status call in flight at SIGTERM may take --report-timeout to give up
            grace = pod["terminationGracePeriodSeconds"]
            assert parsed.shutdown_timeout + parsed.report_timeout < grace
            assert (parsed.api_token_file is not None) == api_on
            if api_on:
                token_secret = values.get("relays.api.token.existingSecret")
                token_file = Path(parsed.api_token_file)
                volume_name = mounts[str(token_file.parent)]
                (volume,) = [v for v in pod["volumes"] if v["name"] == volume_name]
                assert volume["secret"]["secretName"] == (
                    token_secret or "rf-relay-fleet-relay-api-token"
                )
                assert [i["path"] for i in volume["secret"]["items"]] == [token_file.name]
        else:
            assert parsed.liveness == "http://0.0.0.0:8080/healthz"
            assert parsed.store.startswith("redis://")
