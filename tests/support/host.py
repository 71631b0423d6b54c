"""What a real node changes on this machine outside its own directory, and putting it back.

A kubelet, containerd and kube-proxy are not polite guests: they set sysctls,
add iptables chains, make cgroups, bind-mount network namespaces and create
directories under /var and /run that no flag moves. The project's rule is that
whatever a test or script starts on the host, it puts back. :class:`HostBaseline`
records the state of each of those things before the node first starts (kept
in a JSON file, so that ``scripts/local-cluster down`` in a later process can
restore it) and :meth:`HostBaseline.restore` undoes what differs: sysctls
get their old values, chains and directories that were not there go, mounts
made under the node's directory or for its pods' network namespaces are
unmounted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Sysctls the kubelet (setupKernelTunables), kube-proxy and the node's routing change.
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
)
# Directories the kubelet, containerd and the CNI plugins create at fixed places.
FIXED_DIRS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/run/netns",
    "/opt/containerd",
)
# Tables iptables-nft creates on first use; chains of ours go in them.
IPTABLES = ("iptables", "ip6tables")
IPTABLES_TABLES = ("filter", "nat", "mangle")
# Chain prefixes of kube-proxy, the kubelet and the CNI plugins.
NODE_CHAIN_PREFIXES = ("KUBE-", "CNI-")
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    _sysctl_path(name).write_text(value + "\n")


def _run(*argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


def iptables_chains(command: str, table: str) -> list[str] | None:
    """The chains of one table (None: the table does not exist or iptables is missing)."""
    if shutil.which(command) is None:
        return None
    listing = _nft_tables()
    family = "ip" if command == "iptables" else "ip6"
    if f"{family} {table}" not in listing:
        return None
    result = _run(command, "-w", "-t", table, "-S")
    if result.returncode != 0:
        return None
    return [
        line.split()[1] for line in result.stdout.splitlines() if line.startswith(("-N ", "-P "))
    ]


def _nft_tables() -> set[str]:
    if shutil.which("nft") is None:
        return set()
    result = _run("nft", "list", "tables")
    return {line.removeprefix("table ").strip() for line in result.stdout.splitlines()}


def mount_points() -> list[str]:
    """Every mount point of this mount namespace, in mount order."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        path = line.split()[4].encode().decode("unicode_escape")
        points.append(path)
    return points


def unmount_under(prefixes: Iterable[str], keep: Iterable[str] = ()) -> list[str]:
    """Unmount every mount point at or below one of ``prefixes`` (deepest first), but ``keep``."""
    kept = set(keep)
    wanted = tuple(p.rstrip("/") for p in prefixes)
    done = []
    for point in reversed(mount_points()):
        if point in kept or not any(point == p or point.startswith(p + "/") for p in wanted):
            continue
        if _run("umount", point).returncode != 0:
            _run("umount", "-l", point)
        done.append(point)
    return done


def remove_cgroups(name: str = KUBEPODS) -> None:
    """rmdir the ``name`` subtree in every cgroup v1 controller (and the v2 one), deepest first."""
    for controller in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ():
        top = controller / name
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda e: -len(e[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


@dataclass
class HostBaseline:
    """The host as it was before the node first started."""

    sysctls: dict[str, str | None] = field(default_factory=dict)
    existing_dirs: list[str] = field(default_factory=list)
    mount_points: list[str] = field(default_factory=list)
    chains: dict[str, list[str] | None] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)
    had_kubepods: bool = False

    @classmethod
    def capture(cls) -> HostBaseline:
        links = [
            line.split(":")[1].strip().split("@")[0]
            for line in _run("ip", "-o", "link", "show").stdout.splitlines()
        ]
        return cls(
            sysctls={name: read_sysctl(name) for name in SYSCTLS},
            existing_dirs=[d for d in FIXED_DIRS if os.path.lexists(d)],
            mount_points=mount_points(),
            chains={
                f"{cmd} {table}": iptables_chains(cmd, table)
                for cmd in IPTABLES
                for table in IPTABLES_TABLES
            },
            links=links,
            had_kubepods=any((c / KUBEPODS).exists() for c in CGROUP_ROOT.iterdir()),
        )

    @classmethod
    def load(cls, path: Path) -> HostBaseline | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    def restore(self, own_dir: Path, links: Iterable[str] = ()) -> list[str]:
        """Undo what the node changed; returns a line per thing put back."""
        done: list[str] = []
        before = set(self.mount_points)
        unmounted = unmount_under([str(own_dir), "/run/netns", "/var/lib/kubelet"], keep=before)
        if unmounted:
            done.append(f"unmounted {len(unmounted)} mounts")
        for path in Path("/run/netns").glob("cni-*"):
            path.unlink(missing_ok=True)
        for link in links:
            if link not in self.links and _run("ip", "link", "del", link).returncode == 0:
                done.append(f"deleted link {link}")
        done += self._restore_chains()
        if not self.had_kubepods:
            remove_cgroups()
        for name, value in self.sysctls.items():
            if value is not None and read_sysctl(name) != value:
                try:
                    write_sysctl(name, value)
                    done.append(f"sysctl {name} = {value}")
                except OSError as exc:
                    done.append(f"sysctl {name}: could not restore {value}: {exc}")
        for path in FIXED_DIRS:
            if path not in self.existing_dirs and os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {path}")
        return done

    def _restore_chains(self) -> list[str]:
        done = []
        for cmd in IPTABLES:
            for table in IPTABLES_TABLES:
                before = self.chains.get(f"{cmd} {table}")
                now = iptables_chains(cmd, table)
                if now is None:
                    continue
                family = "ip" if cmd == "iptables" else "ip6"
                if before is None:
                    # iptables-nft made the whole table for the node: drop it.
                    if _run("nft", "delete", "table", family, table).returncode == 0:
                        done.append(f"deleted table {family} {table}")
                    continue
                added = [c for c in now if c not in before and c.startswith(NODE_CHAIN_PREFIXES)]
                if not added:
                    continue
                rules = _run(cmd, "-w", "-t", table, "-S").stdout.splitlines()
                for rule in rules:
                    parts = shlex.split(rule)
                    if (
                        parts[:1] == ["-A"]
                        and parts[1] not in added
                        and any(
                            parts[i - 1] in ("-j", "-g") and part == c
                            for i, part in enumerate(parts)
                            for c in added
                        )
                    ):
                        _run(cmd, "-w", "-t", table, "-D", *parts[1:])
                for chain in added:
                    _run(cmd, "-w", "-t", table, "-F", chain)
                for chain in added:
                    _run(cmd, "-w", "-t", table, "-X", chain)
                done.append(f"removed {len(added)} chains from {cmd} -t {table}")
        return done
