import uuid

import pytest

from relay.protocol.geneve import MAX_VNI
from relay.store import MemoryStore
from relay.store.redis import RedisStore
from tests.support.redis_cluster import LocalCluster, LocalSentinel
from tests.support.redis_server import RedisServer

PASSWORD = "pw with spaces/and:colons"
DB = 3
REDIS_KINDS = ("redis", "redis-cluster", "redis-sentinel")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the whole session, with a password; tests use database 3."""
    with RedisServer(tmp_path_factory.mktemp("redis"), password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """One 3-master Redis Cluster for the whole session, with a password on every node."""
    with LocalCluster(tmp_path_factory.mktemp("redis-cluster"), password=PASSWORD) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory):
    """A password-protected master and one sentinel for the whole session; tests use db 3."""
    with LocalSentinel(tmp_path_factory.mktemp("redis-sentinel"), password=PASSWORD) as setup:
        yield setup


@pytest.fixture
def prefix():
    """A key prefix of this test's own, so that tests sharing a server never meet."""
    return f"test-{uuid.uuid4().hex[:12]}:"


def store_url(request, kind):
    """The URL of the session's Redis of one kind, with its password and the tests' database."""
    if kind == "redis":
        return request.getfixturevalue("redis_server").url(DB)
    if kind == "redis-cluster":
        return request.getfixturevalue("redis_cluster").url()
    return request.getfixturevalue("redis_sentinel").url(DB)


class Stores:
    """Makes stores of one kind and closes them all at the end of the test."""

    def __init__(self, kind, url=None, prefix=""):
        self.kind = kind
        self.url = url
        self.prefix = prefix
        self.made = []

    def __call__(self, max_vni=MAX_VNI, **options):
        if self.kind == "memory":
            store = MemoryStore(max_vni=max_vni)
        else:
            store = RedisStore.from_url(self.url, prefix=self.prefix, max_vni=max_vni, **options)
        self.made.append(store)
        return store

    async def close(self):
        for store in self.made:
            await store.close()


@pytest.fixture
async def redis_stores(request, prefix):
    """``redis_stores(max_vni=...)``: a RedisStore on the session server with this test's prefix."""
    stores = Stores("redis", store_url(request, "redis"), prefix)
    yield stores
    await stores.close()


@pytest.fixture
async def cluster_stores(request, prefix):
    """``cluster_stores(max_vni=...)``: a RedisStore on the session cluster, this test's prefix."""
    stores = Stores("redis-cluster", store_url(request, "redis-cluster"), prefix)
    yield stores
    await stores.close()


@pytest.fixture(params=["memory", *REDIS_KINDS])
async def make_store(request, prefix):
    """``make_store(max_vni=...)``: a store of the kind under test."""
    url = None if request.param == "memory" else store_url(request, request.param)
    stores = Stores(request.param, url, prefix)
    yield stores
    await stores.close()
