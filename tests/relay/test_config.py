"""``--report-status auto`` decides as users expect: KUBECONFIG counts, as kubectl reads it.

The configuration is made the way ``relayfleet relay`` makes it: its parser
given an environment (relay/cli.py), then the typed config. Nothing here reads
the test process's own environment.
"""

from __future__ import annotations

import argparse
import os

import pytest

from relay.cli import build_parser
from relay.config import RelayConfig, tailnet_login_server
from relay.flags import from_args

REDIS = ("--store", "redis://127.0.0.1:6379")

# The relay config must not see this host's (or a pod's) service account token.
pytestmark = pytest.mark.usefixtures("pod_token")


def relay_config(*args: str, **environ: str) -> RelayConfig:
    return from_args(RelayConfig, build_parser(environ).parse_args(["relay", *args]))


@pytest.fixture
def kubeconfig(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\n")
    return path


def test_kubeconfig_in_the_environment_turns_auto_on(kubeconfig):
    config = relay_config(*REDIS, KUBECONFIG=str(kubeconfig))
    assert config.report_status == "auto"
    assert config.kubeconfig == str(kubeconfig)
    assert config.reports_status()


def test_without_any_kubeconfig_auto_is_off():
    config = relay_config(*REDIS)
    assert config.kubeconfig is None
    assert not config.reports_status()


def test_only_the_files_of_kubeconfig_that_exist_count(kubeconfig, tmp_path):
    missing = tmp_path / "missing"
    listed = os.pathsep.join([str(missing), "", str(kubeconfig)])
    config = relay_config(*REDIS, KUBECONFIG=listed)
    assert config.kubeconfig == str(kubeconfig)
    assert config.reports_status()
    nothing = relay_config(*REDIS, KUBECONFIG=str(missing))
    assert nothing.kubeconfig is None
    assert not nothing.reports_status()


def test_the_default_kubeconfig_in_home_does_not_count(tmp_path):
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("apiVersion: v1\nkind: Config\n")
    config = relay_config(*REDIS, HOME=str(tmp_path))
    assert not config.reports_status()
    assert relay_config(*REDIS, "--report-status", "on", HOME=str(tmp_path)).reports_status()


def test_the_flag_and_its_own_variable_win_over_kubeconfig(kubeconfig, tmp_path):
    other = tmp_path / "other"
    other.write_text("apiVersion: v1\nkind: Config\n")
    by_flag = relay_config(*REDIS, "--kubeconfig", str(other), KUBECONFIG=str(kubeconfig))
    assert by_flag.kubeconfig == str(other)
    by_env = relay_config(*REDIS, RELAYFLEET_KUBECONFIG=str(other), KUBECONFIG=str(kubeconfig))
    assert by_env.kubeconfig == str(other)


def test_a_relay_with_its_own_memory_store_does_not_report_unless_told(kubeconfig):
    """No operator places RelayEndpoints on a relay whose allocations live in its own memory."""
    assert not relay_config(KUBECONFIG=str(kubeconfig)).reports_status()
    assert relay_config("--report-status", "on", KUBECONFIG=str(kubeconfig)).reports_status()
    assert not relay_config(
        *REDIS, "--report-status", "off", KUBECONFIG=str(kubeconfig)
    ).reports_status()


def test_in_a_pod_auto_reports_with_the_service_account(pod_token):
    pod_token.parent.mkdir()
    pod_token.write_text("token")
    config = relay_config(*REDIS)
    assert config.kubeconfig is None
    assert config.reports_status()
    assert not relay_config().reports_status()  # --store memory


def test_help_names_kubeconfig_as_the_fallback(capsys):
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["relay", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[env RELAYFLEET_KUBECONFIG, else KUBECONFIG]" in text
    assert "KUBECONFIG naming a file that exists" in text


def test_a_tailnet_login_server_is_an_http_or_https_url():
    config = relay_config("--tailnet-login-server", "http://10.0.0.1:8080/")
    assert config.tailnet_login_server == "http://10.0.0.1:8080"
    assert tailnet_login_server("https://hs.example") == "https://hs.example"
    for bad, reason in [("ftp://hs.example", "expected"), ("hs.example", "expected")]:
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            tailnet_login_server(bad)
        with pytest.raises(SystemExit):
            relay_config("--tailnet-login-server", bad)


def test_tailnet_relayendpoints_go_to_the_namespace_given_else_the_pods_else_default():
    server = ("--tailnet-login-server", "http://10.0.0.1:8080")
    assert relay_config(*server).tailnet_endpoints_namespace() == "default"
    assert relay_config(*server, "--pod", "fleet/relay-0").tailnet_endpoints_namespace() == "fleet"
    given = relay_config(*server, "--pod", "fleet/relay-0", "--tailnet-namespace", "peers")
    assert given.tailnet_endpoints_namespace() == "peers"
