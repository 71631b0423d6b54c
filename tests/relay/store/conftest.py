import uuid

import pytest

from relay.geneve import MAX_VNI
from relay.store import MemoryStore
from relay.store.redis import RedisStore
from tests.redis_server import RedisServer

PASSWORD = "pw with spaces/and:colons"
DB = 3


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the whole session, with a password; tests use database 3."""
    with RedisServer(tmp_path_factory.mktemp("redis"), password=PASSWORD) as server:
        yield server


@pytest.fixture
def prefix():
    """A key prefix of this test's own, so that tests sharing a server never meet."""
    return f"test-{uuid.uuid4().hex[:12]}:"


class Stores:
    """Makes stores of one kind and closes them all at the end of the test."""

    def __init__(self, kind, server=None, prefix=""):
        self.kind = kind
        self.server = server
        self.prefix = prefix
        self.made = []

    def __call__(self, max_vni=MAX_VNI, **options):
        if self.kind == "memory":
            store = MemoryStore(max_vni=max_vni)
        else:
            url = self.server.url(DB)
            store = RedisStore.from_url(url, prefix=self.prefix, max_vni=max_vni, **options)
        self.made.append(store)
        return store

    async def close(self):
        for store in self.made:
            await store.close()


@pytest.fixture
async def redis_stores(redis_server, prefix):
    """``redis_stores(max_vni=...)``: a RedisStore on the session server with this test's prefix."""
    stores = Stores("redis", redis_server, prefix)
    yield stores
    await stores.close()


@pytest.fixture(params=["memory", "redis"])
async def make_store(request, prefix):
    """``make_store(max_vni=...)``: a store of the kind under test."""
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    stores = Stores(request.param, server, prefix)
    yield stores
    await stores.close()
