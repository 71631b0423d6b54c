"""One real Kubernetes node on this machine: containerd, the kubelet and kube-proxy.

DESIGN.md asks for a real node wherever pods must run (the chart, probes,
security contexts, Services, pod deletion). This module runs one: containerd
and runc from Debian with the bridge CNI plugin, and the kubelet and
kube-proxy built by ``scripts/build-control-plane`` from the same
k8s.io/kubernetes module as the API server. All their state is under one
directory; what they change outside it is recorded first and put back by
:mod:`tests.support.host`.

The node's address is the gateway address of its pod bridge, so the API
server, the cluster DNS and the NodePorts are reachable from the host and from
every pod without touching the machine's own network. Two settings are needed
on these VMs: containerd's ``restrict_oom_score_adj`` (root lacks
CAP_SYS_RESOURCE, so a sandbox cannot lower its OOM score) and the kubelet's
``failCgroupV1: false`` (the host is on cgroup v1).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

from tests.support.controlplane import BIN, CertPair, ControlPlane, ControlPlaneError, Process
from tests.support.host import HostBaseline, read_sysctl, write_sysctl

NODE_NAME = "relayfleet-node"
BRIDGE = "rfcni0"
POD_SUBNET = ipaddress.ip_network("10.244.0.0/24")
NODE_IP = str(next(POD_SUBNET.hosts()))
CLUSTER_DOMAIN = "cluster.local"
CNI_BIN_DIR = "/usr/lib/cni"
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
KUBE_PROXY_METRICS_PORT = 10249
DEBIAN_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables", "conntrack")


def _ctr_bin() -> str:
    path = shutil.which("ctr")
    if not path:
        raise ControlPlaneError(
            "ctr not found: install Debian's containerd (scripts/build-test-deps does)"
        )
    return path


def _node_processes_running() -> list[str]:
    """``name (pid N)`` of each kubelet and kube-proxy running on this host."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:
            continue
        if name in ("kubelet", "kube-proxy"):
            found.append(f"{name} (pid {comm.parent.name})")
    return found


def _healthz(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class Node:
    """containerd, kubelet and kube-proxy of the node ``NODE_NAME``, state under ``directory``."""

    def __init__(self, directory: Path, control_plane: ControlPlane, *, detached: bool) -> None:
        self.directory = directory
        self.control_plane = control_plane
        self.detached = detached
        self.log_dir = directory / "logs"
        self.containerd_dir = directory / "containerd"
        self.socket = self.containerd_dir / "containerd.sock"
        self.kubelet_dir = directory / "kubelet"
        self.cni_conf_dir = directory / "cni" / "net.d"
        self.baseline_file = directory / "host.json"
        self.containerd = Process("containerd", directory, self.log_dir)
        self.kubelet = Process("kubelet", directory, self.log_dir)
        self.kube_proxy = Process("kube-proxy", directory, self.log_dir)

    def processes(self) -> list[Process]:
        return [self.containerd, self.kubelet, self.kube_proxy]

    # -- host ------------------------------------------------------------------

    def prepare_host(self) -> None:
        """Record the host once, then make the bridge and turn on forwarding."""
        missing = [p for p in DEBIAN_PACKAGES if not _package_installed(p)]
        if missing:
            raise ControlPlaneError(
                f"Debian packages missing: {' '.join(missing)}; run scripts/build-test-deps"
            )
        bridge = subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True, check=False)
        if HostBaseline.load(self.baseline_file) is None:
            if bridge.returncode == 0:
                self._take_over_stale_bridge()
                bridge = subprocess.run(
                    ["ip", "link", "show", BRIDGE], capture_output=True, check=False
                )
            HostBaseline.capture().save(self.baseline_file)
        if bridge.returncode != 0:
            subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(
            ["ip", "addr", "replace", f"{NODE_IP}/{POD_SUBNET.prefixlen}", "dev", BRIDGE],
            check=True,
        )
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        # Pods reach Services of pods on the same bridge through the host's NAT.
        for name in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"):
            if read_sysctl(name) != "1":
                write_sysctl(name, "1")

    def _take_over_stale_bridge(self) -> None:
        """Delete a bridge another checkout left behind, unless its node still runs.

        A cluster that died without ``down`` (a killed CI run, a machine
        snapshot taken mid-run) leaves the bridge; a live one also has a
        kubelet or kube-proxy, whose ports this node would need too.
        """
        live = _node_processes_running()
        if live:
            raise ControlPlaneError(
                f"the bridge {BRIDGE} exists but this checkout did not make it: another"
                f" local cluster runs on this host ({', '.join(live)}); stop it with its own"
                " `scripts/local-cluster down`"
            )
        print(f"node: deleting the bridge {BRIDGE} that a cluster no longer running left")
        subprocess.run(["ip", "link", "del", BRIDGE], check=True)

    def restore_host(self) -> list[str]:
        baseline = HostBaseline.load(self.baseline_file)
        if baseline is None:
            return []
        done = baseline.restore(self.directory, links=[BRIDGE])
        self.baseline_file.unlink(missing_ok=True)
        return done

    # -- configuration -----------------------------------------------------------

    def _write(self, path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def _kubeconfig(self, name: str, user: str, groups: list[str]) -> Path:
        path = self.directory / "kubeconfigs" / f"{name}.kubeconfig"
        cert = CertPair(self.control_plane.pki / f"{name}-client.crt",
                        self.control_plane.pki / f"{name}-client.key")  # fmt: skip
        if not cert.cert.exists():
            cert = self.control_plane.ca.issue(
                f"{name}-client", common_name=user, organizations=groups, client=True
            )
        # Written at every start: the API server's port may have changed since the last.
        return self.control_plane.write_kubeconfig(path, user=user, cert=cert)

    def containerd_config(self, sandbox_image: str) -> Path:
        root = self.containerd_dir
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return self._write(
            root / "config.toml",
            f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  # Root here lacks CAP_SYS_RESOURCE: a sandbox may not lower its OOM score below ours.
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{root / "runc"}"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{self.cni_conf_dir}"
""",
        )

    def cni_config(self) -> Path:
        conflist = {
            "cniVersion": "1.0.0",
            "name": "relayfleet",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(POD_SUBNET), "gateway": NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.directory / "cni" / "ipam"),
                    },
                }
            ],
        }
        return self._write(
            self.cni_conf_dir / "10-relayfleet.conflist", json.dumps(conflist, indent=2) + "\n"
        )

    def kubelet_config(self, cluster_dns: str) -> Path:
        pki = self.control_plane.pki
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "clusterDNS": [cluster_dns],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(self._write(self.directory / "resolv.conf", "")),
            # Only the API server (its kubelet client cert) may use the kubelet's API.
            "authentication": {
                "x509": {"clientCAFile": str(pki / "ca.crt")},
                "webhook": {"enabled": False},
                "anonymous": {"enabled": False},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "podLogsDir": str(self.directory / "pod-logs"),
            "volumePluginDir": str(self.directory / "volume-plugins"),
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
            # A heartbeat in the Ready condition every 10 s (default 5 min), so that an up
            # after a down knows the node Ready by this kubelet, not by the one before.
            "nodeStatusReportFrequency": "10s",
        }
        return self._write(self.directory / "kubelet-config.json", json.dumps(config, indent=2))

    # -- processes -----------------------------------------------------------------

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_ctr_bin(), "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _containerd_up(self) -> bool:
        return self.socket.exists() and self.ctr("version", timeout=10).returncode == 0

    def start_containerd(self, sandbox_image: str) -> None:
        config = self.containerd_config(sandbox_image)
        self.cni_config()
        if self.containerd.pid() is None:
            self.containerd.start(
                [shutil.which("containerd") or "containerd", "--config", str(config)],
                detached=self.detached,
            )

    def import_images(self, archives: dict[str, Path]) -> list[str]:
        """Import OCI archives (ref -> path) that containerd does not have yet, and remove
        older builds of the same images."""
        have = set(self.ctr("images", "ls", "-q").stdout.split())
        repositories = {ref.rpartition(":")[0] for ref in archives}
        stale = [r for r in have if r.rpartition(":")[0] in repositories and r not in archives]
        if stale:
            self.ctr("images", "rm", *stale)
        imported = []
        for ref, archive in archives.items():
            if ref in have:
                continue
            result = self.ctr("images", "import", "--no-unpack", str(archive), timeout=600)
            if result.returncode != 0:
                raise ControlPlaneError(f"ctr images import {archive}: {result.stderr.strip()}")
            imported.append(ref)
        missing = set(archives) - set(self.ctr("images", "ls", "-q").stdout.split())
        if missing:
            raise ControlPlaneError(f"images not in containerd after import: {sorted(missing)}")
        return imported

    def start_kubelet(self, cluster_dns: str) -> None:
        kubeconfig = self._kubeconfig("kubelet", f"system:node:{NODE_NAME}", ["system:nodes"])
        config = self.kubelet_config(cluster_dns)
        if self.kubelet.pid() is None:
            self.kubelet.start(
                [
                    str(BIN / "kubelet"),
                    f"--config={config}",
                    f"--kubeconfig={kubeconfig}",
                    f"--root-dir={self.kubelet_dir}",
                    f"--cert-dir={self.directory / 'kubelet-pki'}",
                    f"--hostname-override={NODE_NAME}",
                    f"--node-ip={NODE_IP}",
                    "--v=1",
                ],
                detached=self.detached,
            )

    def start_kube_proxy(self) -> None:
        kubeconfig = self._kubeconfig("kube-proxy", "system:kube-proxy", [])
        if self.kube_proxy.pid() is None:
            self.kube_proxy.start(
                [
                    str(BIN / "kube-proxy"),
                    f"--kubeconfig={kubeconfig}",
                    f"--hostname-override={NODE_NAME}",
                    "--proxy-mode=iptables",
                    "--cluster-cidr=10.244.0.0/16",
                    # NodePorts on the node's address only: no route_localnet for 127.0.0.1.
                    f"--nodeport-addresses={NODE_IP}/32",
                    # This VM cannot set nf_conntrack_max; leave conntrack's settings alone.
                    "--conntrack-max-per-core=0",
                    "--conntrack-tcp-timeout-established=0s",
                    "--conntrack-tcp-timeout-close-wait=0s",
                    f"--healthz-bind-address=127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
                    f"--metrics-bind-address=127.0.0.1:{KUBE_PROXY_METRICS_PORT}",
                    "--v=1",
                ],
                detached=self.detached,
            )

    def kubelet_healthy(self) -> bool:
        return _healthz(f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz")

    def kube_proxy_healthy(self) -> bool:
        return _healthz(f"http://127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}/healthz")

    def containerd_healthy(self) -> bool:
        return self._containerd_up()

    def node_ready(self) -> bool:
        """Ready by a heartbeat of the kubelet running now (not of one before a restart)."""
        status, body = self.control_plane.request("GET", f"/api/v1/nodes/{NODE_NAME}", timeout=5)
        if status != 200 or not self.kubelet_healthy():
            return False
        started = self.kubelet.started_at()
        for condition in json.loads(body).get("status", {}).get("conditions", []):
            if condition["type"] == "Ready" and condition["status"] == "True":
                beat = datetime.datetime.fromisoformat(condition["lastHeartbeatTime"])
                return started is None or beat.timestamp() >= started - 1
        return False

    def stop(self) -> list[str]:
        """Stop the kubelet and kube-proxy, kill every container, stop containerd."""
        done = []
        for process in (self.kubelet, self.kube_proxy):
            if process.stop():
                done.append(f"stopped {process.name}")
        if self.containerd.pid() is not None and self._containerd_up():
            tasks = self.ctr("tasks", "ls", "-q").stdout.split()
            for task in tasks:
                self.ctr("tasks", "kill", "--signal", "SIGKILL", task, timeout=30)
            for task in tasks:
                self.ctr("tasks", "delete", "--force", task, timeout=30)
            containers = self.ctr("containers", "ls", "-q").stdout.split()
            for container in containers:
                self.ctr("containers", "delete", container, timeout=30)
            if tasks or containers:
                done.append(f"removed {len(containers)} containers")
        if self.containerd.stop():
            done.append("stopped containerd")
        # Shims outlive containerd; ours are the ones serving its socket's namespace.
        for pid in _shim_pids(self.socket):
            subprocess.run(["kill", "-KILL", str(pid)], check=False)
        return done


def _package_installed(name: str) -> bool:
    return subprocess.run(["dpkg", "-s", name], capture_output=True, check=False).returncode == 0


def _shim_pids(socket: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in argv:
            pids.append(int(proc.name))
    return pids
