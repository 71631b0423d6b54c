"""``scripts/local-cluster``: a real single-node Kubernetes on this machine, for the chart.

Issue 15 asks that the Helm chart's own pods run here, from the Dockerfile's
image, as a user's first ``helm install`` would run them. ``scripts/local-fleet``
cannot: it has no kubelet. This has one, and everything around it that a
cluster gives a chart: etcd and kube-apiserver (tests/support/controlplane.py),
the controller-manager (ServiceAccounts, StatefulSets, EndpointSlices) and the
scheduler, a node (tests/support/node.py: containerd, kubelet, kube-proxy),
cluster DNS (CoreDNS, for the chart's ``*.svc`` Redis URL) and a default
StorageClass (local-path-provisioner, for the bundled Redis's volume), with
the images of ``scripts/build-images`` loaded into the node.

Everything runs as detached processes known by pid files under
``.dev/local-cluster/``; the admin kubeconfig is ``.dev/kubeconfig`` and the
chart values naming the images are ``.dev/local-cluster/values.yaml``.
``down`` stops it all and puts the host back as it was (tests/support/host.py).

    scripts/local-cluster up       build once, start what is not running
    scripts/local-cluster status   what runs (exit 3 if something does not)
    scripts/local-cluster down     stop everything, put the host back (--purge: delete the data)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.controlplane import (
    BIN,
    ROOT,
    ControlPlane,
    ControlPlaneError,
    Process,
    build,
)
from tests.support.node import CLUSTER_DOMAIN, NODE_IP, NODE_NAME, Node
from tests.support.waiting import wait_until_sync

HOME = ROOT / ".dev" / "local-cluster"
KUBECONFIG = ROOT / ".dev" / "kubeconfig"
VALUES = HOME / "values.yaml"
IMAGES_JSON = ROOT / ".dev" / "images" / "images.json"
BUILD_IMAGES = ROOT / "scripts" / "build-images"
BUILD_ADDONS = ROOT / "scripts" / "build-cluster-addons"
STORAGE_CLASS = "local-path"
PROVISIONER = "rancher.io/local-path"
PROVISIONER_NAMESPACE = "local-path-storage"
COREDNS_READY_PORT = 18181
COREDNS_HEALTH_PORT = 18080
READY_TIMEOUT = 180.0


class ClusterError(RuntimeError):
    pass


def _run_build(script: Path, timeout: float = 3600) -> None:
    result = subprocess.run([str(script)], text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise ClusterError(f"{script.relative_to(ROOT)} failed ({result.returncode})")


def load_images() -> dict[str, dict[str, str]]:
    """images.json of scripts/build-images: role -> {"ref", "archive"}."""
    try:
        images = json.loads(IMAGES_JSON.read_text())
    except (OSError, ValueError) as exc:
        raise ClusterError(f"{IMAGES_JSON}: {exc}; run scripts/build-images") from exc
    missing = {"relayfleet", "redis", "pause", "base"} - set(images)
    if missing:
        raise ClusterError(f"{IMAGES_JSON} lacks {sorted(missing)}; run scripts/build-images")
    return images


def _split_ref(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def values_yaml(images: dict[str, dict[str, str]]) -> str:
    """The chart values for this cluster: the images built here, nothing else."""
    relay_repo, relay_tag = _split_ref(images["relayfleet"]["ref"])
    redis_repo, redis_tag = _split_ref(images["redis"]["ref"])
    return f"""# Written by scripts/local-cluster up: the images it built (scripts/build-images) and
# loaded into the node. Everything else is the chart's defaults, as on a real cluster.
image:
  repository: {relay_repo}
  tag: "{relay_tag}"
redis:
  image:
    repository: {redis_repo}
    tag: "{redis_tag}"
"""


def _helper_pod(image: str) -> dict:
    """The pod local-path-provisioner runs to make or remove a volume's directory."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "helper-pod"},
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{"name": "helper-pod", "image": image, "imagePullPolicy": "Never"}],
        },
    }


def _provisioner_objects() -> dict:
    """Its namespace, the scripts its helper pods run, and the default StorageClass."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": PROVISIONER_NAMESPACE},
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "local-path-config", "namespace": PROVISIONER_NAMESPACE},
                "data": {
                    "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
                    "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
                },
            },
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": STORAGE_CLASS,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": PROVISIONER,
                "volumeBindingMode": "WaitForFirstConsumer",
                "reclaimPolicy": "Delete",
            },
        ],
    }


class LocalCluster:
    def __init__(self, home: Path = HOME) -> None:
        self.home = home
        self.log_dir = home / "logs"
        self.control_plane = ControlPlane(home, detached=True, address=NODE_IP, with_nodes=True)
        self.controller_manager = Process("kube-controller-manager", home, self.log_dir)
        self.scheduler = Process("kube-scheduler", home, self.log_dir)
        self.node = Node(home, self.control_plane, detached=True)
        self.coredns = Process("coredns", home, self.log_dir)
        self.provisioner = Process("local-path-provisioner", home, self.log_dir)

    def processes(self) -> list[Process]:
        cp = self.control_plane
        return [
            cp.etcd,
            cp.apiserver,
            self.controller_manager,
            self.scheduler,
            *self.node.processes(),
            self.coredns,
            self.provisioner,
        ]

    def all_running(self) -> bool:
        return all(p.pid() is not None for p in self.processes())

    def kubectl(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.control_plane.kubectl(*args, **kwargs)  # type: ignore[arg-type]

    # -- up ------------------------------------------------------------------------

    def build(self) -> None:
        build()
        _run_build(BUILD_ADDONS)
        _run_build(BUILD_IMAGES)

    def up(self) -> dict[str, float]:
        """Start what is not running; returns seconds from the start to each milestone."""
        start = time.monotonic()
        marks: dict[str, float] = {}
        images = load_images()
        self.home.mkdir(parents=True, exist_ok=True)
        self.node.prepare_host()
        self.node.start_containerd(images["pause"]["ref"])
        wait_until_sync(
            self._alive(self.node.containerd, self.node.containerd_healthy),
            "containerd",
            timeout=60,
        )
        self.node.import_images({v["ref"]: Path(v["archive"]) for v in images.values()})
        marks["containerd and images"] = time.monotonic() - start
        self.control_plane.start()
        self.control_plane.write_kubeconfig(
            KUBECONFIG, user="admin", cert=self.control_plane.admin_cert
        )
        marks["API server"] = time.monotonic() - start
        self._start_controllers()
        self._start_coredns()
        self.node.start_kubelet(NODE_IP)
        self.node.start_kube_proxy()
        wait_until_sync(
            self._alive(self.node.kubelet, self.node.node_ready),
            f"node {NODE_NAME} Ready",
            timeout=READY_TIMEOUT,
        )
        marks["node Ready"] = time.monotonic() - start
        wait_until_sync(
            self._alive(self.node.kube_proxy, self.node.kube_proxy_healthy),
            "kube-proxy /healthz",
            timeout=READY_TIMEOUT,
        )
        wait_until_sync(
            self._alive(self.coredns, self._coredns_ready), "CoreDNS /ready", timeout=READY_TIMEOUT
        )
        self._start_provisioner(images["base"]["ref"])
        wait_until_sync(
            self._alive(self.controller_manager, self._default_service_account),
            "the default ServiceAccount",
            timeout=READY_TIMEOUT,
        )
        marks["ServiceAccounts"] = time.monotonic() - start
        VALUES.write_text(values_yaml(images))
        return marks

    def _alive(self, process: Process, ready):
        def check() -> bool:
            if process.pid() is None:
                raise ClusterError(
                    f"{process.name} exited while starting; {process.log}:\n{process.log_tail()}"
                )
            return bool(ready())

        return check

    def _identity(self, name: str, user: str) -> Path:
        return self.node._kubeconfig(name, user, [])

    def _start_controllers(self) -> None:
        pki = self.control_plane.pki
        kubeconfig = self._identity("kube-controller-manager", "system:kube-controller-manager")
        if self.controller_manager.pid() is None:
            self.controller_manager.start(
                [
                    str(BIN / "kube-controller-manager"),
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    "--use-service-account-credentials=true",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    "--secure-port=0",
                    "--v=1",
                ],
                detached=True,
            )
        kubeconfig = self._identity("kube-scheduler", "system:kube-scheduler")
        if self.scheduler.pid() is None:
            self.scheduler.start(
                [
                    str(BIN / "kube-scheduler"),
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    "--secure-port=0",
                    "--v=1",
                ],
                detached=True,
            )

    def _start_coredns(self) -> None:
        corefile = self.home / "Corefile"
        kubeconfig = self.control_plane.kubeconfig
        corefile.write_text(
            f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{COREDNS_HEALTH_PORT}
    ready 127.0.0.1:{COREDNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} relay-fleet-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
.:53 {{
    bind {NODE_IP}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""
        )
        if self.coredns.pid() is None:
            self.coredns.start([str(BIN / "coredns"), "-conf", str(corefile)], detached=True)

    def _coredns_ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{COREDNS_READY_PORT}/ready"
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def _start_provisioner(self, helper_image: str) -> None:
        volumes = self.home / "volumes"
        volumes.mkdir(parents=True, exist_ok=True)
        config = self.home / "local-path-config.json"  # the provisioner wants ".json"
        paths = {"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(volumes)]}
        config.write_text(json.dumps({"nodePathMap": [paths]}, indent=2) + "\n")
        helper_pod = self.home / "local-path-helper-pod.json"
        helper_pod.write_text(json.dumps(_helper_pod(helper_image), indent=2) + "\n")
        self.kubectl("apply", "-f", "-", input=json.dumps(_provisioner_objects()))
        if self.provisioner.pid() is None:
            self.provisioner.start(
                [
                    str(BIN / "local-path-provisioner"),
                    "start",
                    f"--kubeconfig={self.control_plane.kubeconfig}",
                    f"--config={config}",
                    f"--helper-pod-file={helper_pod}",
                    f"--provisioner-name={PROVISIONER}",
                    f"--namespace={PROVISIONER_NAMESPACE}",
                    "--configmap-name=local-path-config",
                    # The helper pods need no API access; the default account exists.
                    "--service-account-name=default",
                ],
                detached=True,
            )

    def _default_service_account(self) -> bool:
        status, _ = self.control_plane.request(
            "GET", "/api/v1/namespaces/default/serviceaccounts/default", timeout=5
        )
        return status == 200

    # -- status and down -----------------------------------------------------------

    def status(self) -> bool:
        self.control_plane.load_state()
        every = True
        width = max(len(p.name) for p in self.processes())
        for process in self.processes():
            pid = process.pid()
            every &= pid is not None
            state = "running" if pid else "stopped"
            print(f"  {process.name:<{width}}  {state:<8} {pid or '-':>7}  {process.log}")
        if every:
            ready = "Ready" if self.node.node_ready() else "not Ready"
            print(f"  node {NODE_NAME} ({NODE_IP}): {ready}")
        print(f"  kubeconfig: {KUBECONFIG}   chart values: {VALUES}")
        return every

    def down(self, purge: bool = False) -> None:
        for process in (self.provisioner, self.coredns):
            if process.stop():
                print(f"local-cluster: stopped {process.name}")
        for line in self.node.stop():
            print(f"local-cluster: {line}")
        for process in (self.scheduler, self.controller_manager):
            if process.stop():
                print(f"local-cluster: stopped {process.name}")
        self.control_plane.close()
        for line in self.node.restore_host():
            print(f"local-cluster: {line}")
        if purge:
            shutil.rmtree(self.home, ignore_errors=True)
            KUBECONFIG.unlink(missing_ok=True)
            print(f"local-cluster: deleted {self.home} and {KUBECONFIG}")


def usage() -> None:
    print(
        f"""
Use it:
  export KUBECONFIG={KUBECONFIG}
  .dev/bin/helm install fleet charts/relay-fleet -n relayfleet --create-namespace \\
      -f {VALUES.relative_to(ROOT)} --wait
  kubectl apply -f examples/relayendpoint.yaml
  kubectl get rep
Status: scripts/local-cluster status
Stop:   scripts/local-cluster down   (puts the host back; down --purge also deletes the data)"""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/local-cluster", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="build once, start whatever is not running")
    commands.add_parser("status", help="show what runs")
    down = commands.add_parser("down", help="stop everything and put the host back")
    down.add_argument("--purge", action="store_true", help="also delete .dev/local-cluster")
    args = parser.parse_args(argv)

    cluster = LocalCluster()
    try:
        if args.command == "up":
            if cluster.all_running():
                print("local-cluster: already up")
            else:
                cluster.build()
                began = time.monotonic()
                marks = cluster.up()
                print(
                    f"local-cluster: up in {time.monotonic() - began:.1f} s ("
                    + ", ".join(f"{k} {v:.1f} s" for k, v in marks.items())
                    + ")"
                )
            cluster.status()
            usage()
        elif args.command == "status":
            return 0 if cluster.status() else 3
        else:
            cluster.down(args.purge)
    except (ClusterError, ControlPlaneError, TimeoutError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        print(f"local-cluster: error: {exc}\n{detail}".rstrip(), file=sys.stderr)
        print(
            "local-cluster: what did start keeps running; see `scripts/local-cluster status`,"
            " stop it with `scripts/local-cluster down`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
