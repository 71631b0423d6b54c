"""``scripts/local-cluster down`` leaves the host as it found it.

Runs after the other real-node tests (files run in name order), once pods
have run, been deleted and moved to the host's network: the kubelet, containerd
and kube-proxy have then changed all they change. The host is compared with
the record taken before the node first started (tests/support/host.py). A
bridge that a cluster which died without ``down`` left is taken over.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.host import CGROUP_ROOT, KUBEPODS, HostBaseline, mount_points
from tests.support.local_cluster import LocalCluster
from tests.support.node import BRIDGE


def test_down_puts_the_host_back(cluster: LocalCluster):
    baseline = HostBaseline.load(cluster.node.baseline_file)
    assert baseline is not None, "the node records the host before it first starts"
    was_up = cluster.all_running()
    cluster.down()
    try:
        now = HostBaseline.capture()
        assert now.sysctls == baseline.sysctls
        assert now.chains == baseline.chains
        assert BRIDGE not in now.links
        assert set(now.existing_dirs) == set(baseline.existing_dirs)
        home = str(cluster.home)
        assert [p for p in mount_points() if p.startswith(home)] == []
        assert set(mount_points()) <= set(baseline.mount_points)
        kubepods = any((c / KUBEPODS).exists() for c in CGROUP_ROOT.iterdir())
        assert kubepods == baseline.had_kubepods
        assert not list(Path("/run/netns").glob("cni-*"))
        assert not any(p.pid() for p in cluster.processes())
    finally:
        if was_up:
            cluster.up()  # as the session found it; its fixture takes it down again


def test_a_bridge_left_by_a_cluster_that_died_is_taken_over(cluster: LocalCluster):
    was_up = cluster.all_running()
    cluster.down()
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    try:
        cluster.up()
        assert cluster.all_running()
        baseline = HostBaseline.load(cluster.node.baseline_file)
        assert baseline is not None
        assert BRIDGE not in baseline.links, "down deletes the bridge it took over"
    finally:
        if not was_up:
            cluster.down()
