"""A real Kubernetes control plane on loopback: etcd and kube-apiserver as local processes.

DESIGN.md asks for tests against a real kube-apiserver with etcd, never a
mock, and issue 5 for ``scripts/local-fleet`` on the same. Both are built
from Go modules by ``scripts/build-control-plane`` (tools/controlplane) into
``.dev/bin``. A :class:`ControlPlane` generates its PKI (a CA, serving certs,
a service-account signing key, an admin client cert in ``system:masters``),
runs etcd (TLS, client-cert auth) and kube-apiserver (client certs and a
static token, RBAC, service-account tokens) on free loopback ports with all
state in one directory, waits until the API server is ready, and writes an
admin kubeconfig. It mints client certs and kubeconfigs for other identities,
so that tests can check what a least-privilege user or service account may do.

There is no controller-manager, scheduler or kubelet: objects are stored and
validated, admission and RBAC apply, but nothing reconciles them (no pods run,
a deleted namespace stays Terminating, no ServiceAccount is created for you).

Processes are tracked by pid files in the directory, so a later process can
find, report and stop what an earlier one started (``scripts/local-fleet``
starts them ``detached`` and returns while they keep running).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.ports import free_port
from tests.support.waiting import wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".dev" / "bin"
BUILD_SCRIPT = ROOT / "scripts" / "build-control-plane"
SERVICE_CIDR = "10.96.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"
CERT_DAYS = 365
# ServiceAccount admission refuses pods whose service account is missing, and
# only the controller-manager (absent here) creates each namespace's default.
DISABLED_ADMISSION = "ServiceAccount"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


def build(timeout: float = 1800) -> None:
    """Build kube-apiserver and etcd into .dev/bin (a no-op when up to date)."""
    try:
        result = subprocess.run(
            [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ControlPlaneError(f"scripts/build-control-plane took over {timeout} s") from exc
    if result.returncode != 0:
        raise ControlPlaneError(
            f"scripts/build-control-plane failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )


def kubectl_executable() -> str:
    """kubectl from $KUBECTL, else PATH."""
    path = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not path:
        raise ControlPlaneError("kubectl not found: put it on PATH or set KUBECTL")
    return path


def port_free(port: int | None, address: str = "127.0.0.1") -> bool:
    if port is None:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers bind: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
        return True


# -- PKI ---------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


class CertificateAuthority:
    """A CA kept as ca.crt and ca.key in a directory, created on first use."""

    def __init__(self, directory: Path, common_name: str = "relay-fleet local CA") -> None:
        self.directory = directory
        self.cert_path = directory / "ca.crt"
        self.key_path = directory / "ca.key"
        if not (self.cert_path.exists() and self.key_path.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
            now = datetime.datetime.now(datetime.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=CERT_DAYS * 10))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        key_cert_sign=True,
                        crl_sign=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .sign(key, hashes.SHA256())
            )
            _write_private(self.key_path, _key_pem(key))
            self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        loaded = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        self._key = loaded

    def issue(
        self,
        name: str,
        *,
        common_name: str,
        organizations: Iterable[str] = (),
        server: bool = False,
        client: bool = False,
        hosts: Iterable[str] = (),
        days: int = CERT_DAYS,
    ) -> CertPair:
        """Issue ``name``.crt/.key: a leaf cert for a server (``hosts`` as SANs), a client, or both.

        A client cert's CN is the Kubernetes user name and each O a group.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        pair = CertPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        _write_private(pair.key, _key_pem(key))
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return pair


# -- processes -----------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and start time (clock ticks after boot), which tells pids apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


class Process:
    """One long-running program, known by a pid file, logging to files.

    ``detached`` processes outlive whoever started them; the others are sent
    SIGTERM when their parent dies, so a killed pytest leaves nothing behind.
    """

    def __init__(self, name: str, run_dir: Path, log_dir: Path) -> None:
        self.name = name
        self.pid_file = run_dir / f"{name}.pid"
        self.log = log_dir / f"{name}.log"
        self.stdout_log = log_dir / f"{name}.out"
        self._popen: subprocess.Popen[bytes] | None = None

    def pid(self) -> int | None:
        """The pid if the process of the pid file still runs (not a zombie, not a reused pid)."""
        try:
            recorded = json.loads(self.pid_file.read_text())
            pid, started = int(recorded["pid"]), int(recorded["started"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X") or stat[1] != started:
            return None
        return pid

    def start(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        detached: bool = False,
        separate_stdout: bool = False,
    ) -> int:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as files:
            log = files.enter_context(self.log.open("ab"))
            out = files.enter_context(self.stdout_log.open("wb")) if separate_stdout else log
            self._popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                env=env,
                cwd=ROOT,
                start_new_session=True,
                preexec_fn=None if detached else _die_with_parent,
            )
        stat = _proc_stat(self._popen.pid)
        record = {"pid": self._popen.pid, "started": stat[1] if stat else -1, "argv": list(argv)}
        self.pid_file.write_text(json.dumps(record) + "\n")
        return self._popen.pid

    def started_at(self) -> float | None:
        """When the running process started (seconds since the epoch), if it runs."""
        pid = self.pid()
        stat = _proc_stat(pid) if pid is not None else None
        if stat is None:
            return None
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + stat[1] / os.sysconf("SC_CLK_TCK")

    def exited(self) -> int | None:
        """The exit code if this process started by us has ended, else None."""
        if self._popen is None:
            return None if self.pid() else -1
        return self._popen.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; True if it was running."""
        pid = self.pid()
        popen, self._popen = self._popen, None
        if pid is None:
            if popen is not None:
                popen.poll()
            self.pid_file.unlink(missing_ok=True)
            return False
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(wait)
                    break
            else:
                try:
                    wait_until_sync(
                        lambda: self.pid() is None, f"{self.name} to exit", timeout=wait
                    )
                    break
                except TimeoutError:
                    pass
        self.pid_file.unlink(missing_ok=True)
        return True


# -- the control plane ---------------------------------------------------------


class ControlPlane:
    """etcd and kube-apiserver on loopback, all state under ``directory``.

    ``with ControlPlane(path) as cp:`` starts it and stops it. ``durable=False``
    runs etcd without fsync (for throwaway test clusters). ``address`` is where
    kube-apiserver listens and what it advertises: loopback for the tests, the
    node's address for scripts/local-cluster, whose pods reach it through the
    ``kubernetes`` Service. ``with_nodes=True`` configures it for a cluster with
    a kubelet and a controller-manager (ServiceAccount admission, the
    ``kubernetes`` Service's endpoints, a client cert for the kubelet API).
    """

    def __init__(
        self,
        directory: Path,
        *,
        bin_dir: Path = BIN,
        durable: bool = True,
        detached: bool = False,
        address: str = "127.0.0.1",
        with_nodes: bool = False,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.address = address
        self.with_nodes = with_nodes
        self.bin_dir = bin_dir
        self.durable = durable
        self.detached = detached
        self.pki = self.directory / "pki"
        self.log_dir = self.directory / "logs"
        self.kubeconfig = self.directory / "kubeconfig"
        self.token_file = self.pki / "tokens.csv"
        self.state_file = self.directory / "controlplane.json"
        self.etcd = Process("etcd", self.directory, self.log_dir)
        self.apiserver = Process("kube-apiserver", self.directory, self.log_dir)
        self.ports: dict[str, int] = {}
        self.admin_token = ""
        self._ca: CertificateAuthority | None = None

    # The addresses are known once :meth:`start` has picked the ports.
    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.ports['apiserver']}"

    @property
    def etcd_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['etcd-client']}"

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:
            self._ca = CertificateAuthority(self.pki)
        return self._ca

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def running(self) -> dict[str, int | None]:
        return {"etcd": self.etcd.pid(), "kube-apiserver": self.apiserver.pid()}

    def load_state(self) -> None:
        """Ports and token of an earlier start, reused so old kubeconfigs and etcd data fit."""
        try:
            state = json.loads(self.state_file.read_text())
            self.ports = {k: int(v) for k, v in state["ports"].items()}
            self.admin_token = state["admin_token"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.ports, self.admin_token = {}, ""

    def _choose_ports(self) -> None:
        running = self.running()
        owners = {"etcd-client": "etcd", "etcd-peer": "etcd", "apiserver": "kube-apiserver"}
        taken: set[int] = set()
        for name, owner in owners.items():
            port = self.ports.get(name)
            free = port_free(port, self.address if owner == "kube-apiserver" else "127.0.0.1")
            if port is None or port in taken or (not running[owner] and not free):
                port = free_port()
                while port in taken:
                    port = free_port()
            self.ports[name] = port
            taken.add(port)
        if not self.admin_token:
            self.admin_token = secrets.token_urlsafe(32)
        state = {"ports": self.ports, "admin_token": self.admin_token}
        _write_private(self.state_file, (json.dumps(state, indent=2) + "\n").encode())

    def _ensure_pki(self) -> None:
        ca = self.ca
        hosts = ["127.0.0.1", "localhost"]
        if self.address not in hosts:
            hosts.append(self.address)
        if not (self.pki / "etcd-server.crt").exists():
            ca.issue("etcd-server", common_name="etcd", server=True, client=True, hosts=hosts)
        if not (self.pki / "apiserver-etcd-client.crt").exists():
            ca.issue("apiserver-etcd-client", common_name="kube-apiserver-etcd-client", client=True)
        if not (self.pki / "apiserver.crt").exists():
            first_service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
            ca.issue(
                "apiserver",
                common_name="kube-apiserver",
                server=True,
                hosts=[
                    *hosts,
                    first_service_ip,
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ],
            )
        if self.with_nodes and not (self.pki / "apiserver-kubelet-client.crt").exists():
            ca.issue(
                "apiserver-kubelet-client",
                common_name="kube-apiserver-kubelet-client",
                organizations=["system:masters"],
                client=True,
            )
        if not (self.pki / "admin.crt").exists():
            ca.issue("admin", common_name="admin", organizations=["system:masters"], client=True)
        if not (self.pki / "sa.key").exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write_private(self.pki / "sa.key", _key_pem(key))
            (self.pki / "sa.pub").write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        _write_private(
            self.token_file, f'{self.admin_token},admin,admin,"system:masters"\n'.encode()
        )

    def etcd_argv(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        pki = self.pki
        argv = [
            str(self.bin_dir / "etcd"),
            "--name=controlplane",
            f"--data-dir={self.directory / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=controlplane={peer}",
            f"--cert-file={pki / 'etcd-server.crt'}",
            f"--key-file={pki / 'etcd-server.key'}",
            f"--trusted-ca-file={pki / 'ca.crt'}",
            "--client-cert-auth",
            "--log-level=warn",
        ]
        if not self.durable:
            argv.append("--unsafe-no-fsync")
        return argv

    def apiserver_argv(self) -> list[str]:
        pki = self.pki
        argv = [
            str(self.bin_dir / "kube-apiserver"),
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            f"--secure-port={self.ports['apiserver']}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={self.token_file}",
            "--authorization-mode=Node,RBAC",
            f"--etcd-servers={self.etcd_url}",
            f"--etcd-cafile={pki / 'ca.crt'}",
            f"--etcd-certfile={pki / 'apiserver-etcd-client.crt'}",
            f"--etcd-keyfile={pki / 'apiserver-etcd-client.key'}",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false",
        ]
        if self.with_nodes:
            return [
                *argv,
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        return [
            *argv,
            f"--disable-admission-plugins={DISABLED_ADMISSION}",
            # Endpoints refuse the loopback address the API server would publish
            # for the "kubernetes" Service, and no pod here would use them.
            "--endpoint-reconciler-type=none",
        ]

    def _raise_if_exited(self, process: Process) -> None:
        code = process.exited()
        if code is not None:
            raise ControlPlaneError(
                f"{process.name} exited ({code}) while starting; {process.log}:\n"
                f"{process.log_tail()}"
            )

    def _ready_while_running(self, process: Process, ready: Callable[[], bool]) -> bool:
        """``ready()``, once sure that ``process`` has not exited (else ControlPlaneError)."""
        self._raise_if_exited(process)
        return ready()

    def _etcd_healthy(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(
            self.pki / "apiserver-etcd-client.crt", self.pki / "apiserver-etcd-client.key"
        )
        try:
            with urllib.request.urlopen(f"{self.etcd_url}/health", context=context, timeout=2) as r:
                return json.load(r).get("health") == "true"
        except (OSError, ValueError):
            return False

    def start(self, timeout: float = 120.0) -> None:
        """Start whichever of etcd and kube-apiserver is not running, and wait until ready."""
        for program in ("etcd", "kube-apiserver"):
            if not os.access(self.bin_dir / program, os.X_OK):
                raise ControlPlaneError(
                    f"{self.bin_dir / program} is missing: run scripts/build-control-plane"
                )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.load_state()
        self._choose_ports()
        self._ensure_pki()
        deadline = time.monotonic() + timeout
        try:
            if self.etcd.pid() is None:
                self.etcd.start(self.etcd_argv(), detached=self.detached)
            wait_until_sync(
                lambda: self._ready_while_running(self.etcd, self._etcd_healthy),
                "etcd /health",
                timeout=deadline - time.monotonic(),
            )
            if self.apiserver.pid() is None:
                self.apiserver.start(self.apiserver_argv(), detached=self.detached)
            wait_until_sync(
                lambda: self._ready_while_running(self.apiserver, self._apiserver_ready),
                "kube-apiserver /readyz and the default namespace",
                timeout=deadline - time.monotonic(),
                interval=0.1,
            )
        except BaseException:
            self.close()
            raise
        self.write_kubeconfig(self.kubeconfig, user="admin", cert=self.admin_cert)

    def close(self) -> None:
        """Stop kube-apiserver, then etcd (SIGTERM, then SIGKILL)."""
        self.apiserver.stop()
        self.etcd.stop()

    # -- talking to it -------------------------------------------------------

    @property
    def admin_cert(self) -> CertPair:
        return CertPair(self.pki / "admin.crt", self.pki / "admin.key")

    def _ssl_context(self, cert: CertPair | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        cert = cert or self.admin_cert
        context.load_cert_chain(cert.cert, cert.key)
        return context

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        cert: CertPair | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        """One HTTPS request to the API server as admin (or ``cert``): (status, body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.server}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(cert), timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _apiserver_ready(self) -> bool:
        try:
            status, body = self.request("GET", "/readyz", timeout=5)
            if status != 200 or body.strip() != b"ok":
                return False
            status, _ = self.request("GET", "/api/v1/namespaces/default", timeout=5)
            return status == 200
        except OSError:
            return False

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane (as admin unless ``kubeconfig``)."""
        result = subprocess.run(
            [
                kubectl_executable(),
                f"--kubeconfig={kubeconfig or self.kubeconfig}",
                f"--cache-dir={self.directory / 'kubectl-cache'}",
                *args,
            ],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, result.args, result.stdout, result.stderr
            )
        return result

    # -- other identities -------------------------------------------------------

    def mint_client_cert(self, user: str, groups: Iterable[str] = ()) -> CertPair:
        """A client cert signed by the cluster CA: the API server sees ``user`` in ``groups``."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
        return self.ca.issue(
            f"users/{safe}-{secrets.token_hex(4)}",
            common_name=user,
            organizations=groups,
            client=True,
        )

    def kubeconfig_for_user(
        self, user: str, groups: Iterable[str] = (), path: Path | None = None
    ) -> Path:
        """A kubeconfig with a freshly minted client cert for ``user`` in ``groups``."""
        cert = self.mint_client_cert(user, groups)
        path = path or cert.cert.with_suffix(".kubeconfig")
        return self.write_kubeconfig(path, user=user, cert=cert)

    def kubeconfig_for_token(self, token: str, user: str, path: Path) -> Path:
        """A kubeconfig that authenticates with a bearer token (a ServiceAccount's, say)."""
        return self.write_kubeconfig(path, user=user, token=token)

    def service_account_token(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> str:
        """A token for an existing ServiceAccount, through the TokenRequest API."""
        status, body = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        if status != 201:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{name}: {status} {body!r}")
        return json.loads(body)["status"]["token"]

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, path: Path | None = None
    ) -> Path:
        """A kubeconfig acting as ``system:serviceaccount:<namespace>:<name>`` (must exist)."""
        token = self.service_account_token(namespace, name)
        path = path or self.directory / "kubeconfigs" / f"sa-{namespace}-{name}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{name}"
        return self.write_kubeconfig(path, user=user, token=token, namespace=namespace)

    def write_kubeconfig(
        self,
        path: Path,
        *,
        user: str,
        cert: CertPair | None = None,
        token: str | None = None,
        namespace: str = "default",
    ) -> Path:
        """Write a kubeconfig (JSON, which kubectl reads as YAML), CA and credentials inline."""

        def b64(file: Path) -> str:
            return base64.b64encode(file.read_bytes()).decode()

        credentials: dict[str, str] = {}
        if cert is not None:
            credentials["client-certificate-data"] = b64(cert.cert)
            credentials["client-key-data"] = b64(cert.key)
        if token is not None:
            credentials["token"] = token
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "relay-fleet-local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": b64(self.pki / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [
                {
                    "name": "relay-fleet-local",
                    "context": {
                        "cluster": "relay-fleet-local",
                        "user": user,
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "relay-fleet-local",
            "preferences": {},
        }
        _write_private(Path(path), (json.dumps(config, indent=2) + "\n").encode())
        return Path(path)
