"""Fixtures shared by every test package: a real Kubernetes control plane for the session,
and a real redis-server with the fleet's store on it for a test.

The ``control_plane`` fixture (etcd and kube-apiserver from tests/support/controlplane.py)
costs a build the first time and a few seconds per session after that, so only
sessions that select a test using it pay: the build runs once, after collection
and before any test's timeout starts, and nothing here imports the control
plane's dependencies until then.

It also marks what each test needs, so that a run can leave it out (markers in
pyproject.toml): ``e2e`` every test using the control plane, ``faults``, ``charts``,
``node`` and ``tailnet`` the tests in those folders (``netns`` is set by the module that needs
root). The quick inner loop is
``pytest -m "not e2e and not faults and not netns and not charts and not node and not tailnet"``.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from relay.store.redis import RedisStore
from tests.support.redis_server import RedisServer

if TYPE_CHECKING:
    from tests.support.controlplane import ControlPlane

_BUILD_ERROR = pytest.StashKey[str]()
TESTS = Path(__file__).parent
FOLDER_MARKS = {
    TESTS / "faults": pytest.mark.faults,
    TESTS / "charts": pytest.mark.charts,
    TESTS / "node": pytest.mark.node,
    TESTS / "tailnet": pytest.mark.tailnet,
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with what it needs, before ``-m`` selects (see the module docstring)."""
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
        for folder, mark in FOLDER_MARKS.items():
            if item.path.is_relative_to(folder):
                item.add_marker(mark)


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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, without persistence (a module or folder needing
    another kind defines its own)."""
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """The fleet's Redis store on :func:`redis_server`."""
    store = RedisStore.from_url(redis_server.url())
    yield store
    await store.close()
