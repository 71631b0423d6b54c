"""Fixtures shared by every test package: a real Kubernetes control plane for the session.

The ``control_plane`` fixture (etcd and kube-apiserver from tests/support/controlplane.py)
costs a build the first time and a few seconds per session after that, so only
sessions that select a test using it pay: the build runs once, after collection
and before any test's timeout starts, and nothing here imports the control
plane's dependencies until then.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.controlplane import ControlPlane

_BUILD_ERROR = pytest.StashKey[str]()


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if not any("control_plane" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    from tests.support import controlplane

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("control_plane: scripts/build-control-plane (minutes on first use)")
    try:
        controlplane.build()
    except controlplane.ControlPlaneError as exc:
        session.config.stash[_BUILD_ERROR] = str(exc)


@pytest.fixture(scope="session")
def control_plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """A real etcd and kube-apiserver on loopback for the whole session.

    Yields the :class:`tests.support.controlplane.ControlPlane`: ``kubeconfig`` (admin),
    ``kubectl(*args)``, ``kubeconfig_for_user(user, groups)``,
    ``kubeconfig_for_service_account(namespace, name)`` and ``request(...)``.
    Tests share it, so each should work in a namespace of its own.
    """
    from tests.support import controlplane

    error = request.config.stash.get(_BUILD_ERROR, None)
    if error is not None:
        pytest.fail(error, pytrace=False)
    directory = tmp_path_factory.mktemp("controlplane")
    plane = controlplane.ControlPlane(directory, durable=False)
    try:
        plane.start()
    except (controlplane.ControlPlaneError, TimeoutError) as exc:
        pytest.fail(str(exc), pytrace=False)
    yield plane
    plane.close()
    shutil.rmtree(directory / "etcd", ignore_errors=True)


@pytest.fixture
def kube_namespace(control_plane: ControlPlane) -> str:
    """A fresh namespace for one test (left behind: nothing here finalizes namespaces)."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    return name
