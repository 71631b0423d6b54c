"""What scripts/build-images builds: the sandbox program, and the archives if they are built.

The pause program (tools/pause) is built and signalled here. The archives are
checked only where `scripts/build-images` has run (.dev/images/images.json):
each one named for containerd by its full reference, and each image's
configured user the one the chart or containerd runs it as. Importing and
running them is for a real containerd (scripts/local-cluster).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.support.paths import ROOT

PAUSE = ROOT / "tools" / "pause"
IMAGES_JSON = ROOT / ".dev" / "images" / "images.json"
# role -> (repository, the user its image runs as)
ROLES = {
    "base": ("localhost/relayfleet-base", ""),
    "relayfleet": ("localhost/relayfleet", "65532:65532"),
    "redis": ("localhost/relayfleet-redis", "999:999"),
    "pause": ("localhost/relayfleet-pause", "65535:65535"),
}


def _go() -> str:
    go = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).is_file():
        pytest.skip("no Go toolchain to build tools/pause")
    return go


@pytest.fixture(scope="module")
def pause_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("pause") / "pause"
    subprocess.run(
        [_go(), "build", "-trimpath", "-o", str(binary), "."],
        cwd=PAUSE,
        env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"},
        check=True,
        timeout=300,
    )
    return binary


def test_pause_module_has_no_dependencies() -> None:
    assert "require" not in (PAUSE / "go.mod").read_text()
    assert not (PAUSE / "go.sum").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_pause_blocks_until_told_to_stop(pause_binary: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen([str(pause_binary)])
    try:
        time.sleep(0.5)
        assert proc.poll() is None, "pause exited by itself"
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def _is_static(elf: bytes) -> bool:
    """An x86-64 (ELF64, little-endian) executable without a program interpreter."""
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    types = [struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


def test_pause_is_static(pause_binary: Path) -> None:
    assert _is_static(pause_binary.read_bytes())


def _images() -> dict[str, dict[str, str]]:
    if not IMAGES_JSON.exists():
        pytest.skip("no images built (scripts/build-images)")
    return json.loads(IMAGES_JSON.read_text())


def _read(archive: tarfile.TarFile, name: str) -> bytes:
    member = archive.extractfile(name)
    assert member is not None, name
    return member.read()


def _blob(archive: tarfile.TarFile, digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    return _read(archive, f"blobs/{algorithm}/{hexdigest}")


def test_images_json_names_every_role() -> None:
    images = _images()
    assert set(images) == set(ROLES)
    for role, image in images.items():
        assert set(image) == {"ref", "archive"}, role
        repository, _, tag = image["ref"].rpartition(":")
        assert repository == ROLES[role][0]
        assert re.fullmatch(r"[0-9a-f]{12}", tag), image["ref"]
        assert Path(image["archive"]).is_absolute() and Path(image["archive"]).is_file()


@pytest.mark.parametrize("role", ROLES)
def test_archive_is_named_and_configured_for_containerd(role: str) -> None:
    image = _images()[role]
    with tarfile.open(image["archive"]) as archive:
        (entry,) = json.loads(_read(archive, "index.json"))["manifests"]
        # ctr import names the image by io.containerd.image.name, else by ref.name.
        assert entry["annotations"]["io.containerd.image.name"] == image["ref"]
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == image["ref"]
        manifest = json.loads(_blob(archive, entry["digest"]))
        config = json.loads(_blob(archive, manifest["config"]["digest"]))
        assert (config["os"], config["architecture"]) == ("linux", "amd64")
        assert config["config"].get("User", "") == ROLES[role][1]
        if role == "pause":
            assert config["config"]["Entrypoint"] == ["/pause"]
            (layer,) = manifest["layers"]
            rootfs = io.BytesIO(gzip.decompress(_blob(archive, layer["digest"])))
            with tarfile.open(fileobj=rootfs) as files:
                assert [m.name for m in files.getmembers() if m.isfile()] == ["pause"]
                assert _is_static(_read(files, "pause"))
