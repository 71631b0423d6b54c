"""Which store and which redis-py client each ``--store`` URL form makes, and what is refused.

Nothing here connects: the clients are only built, so the options they carry
(addresses, credentials, database, timeouts, retries, TLS) are what is checked.
"""

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.sentinel import (
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from relay.store import REDIS_SCHEMES, MemoryStore, check_store_url, open_store
from relay.store.redis import RedisStore


@pytest.fixture
async def opened():
    """``opened(url, **options)``: ``open_store`` with max_vni 10; closed at the end."""
    stores = []

    def open_(url, **options):
        store = open_store(url, max_vni=10, **options)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        await store.close()


def sentinels(pool):
    return [
        {
            key: client.connection_pool.connection_kwargs.get(key)
            for key in ("host", "port", "password", "socket_timeout", "socket_connect_timeout")
        }
        for client in pool.sentinel_manager.sentinels
    ]


async def test_memory_is_the_memory_store(opened):
    assert isinstance(opened("memory"), MemoryStore)


async def test_redis_urls_make_one_plain_client(opened):
    client = opened("redis://:p%40ss@db.example:6380/2").client
    assert type(client) is Redis
    assert not isinstance(client.connection_pool, SentinelConnectionPool)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "db.example",
        6380,
        2,
        "p@ss",
    )
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (1.0, 2.0)
    assert kwargs["retry"].get_retries() == 1

    tls = opened("rediss://db.example?ssl_ca_certs=/ca.pem").client.connection_pool
    assert tls.connection_class is SSLConnection
    assert tls.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    unix = opened("unix:///run/redis.sock?db=4").client.connection_pool.connection_kwargs
    assert (unix["path"], unix["db"]) == ("/run/redis.sock", 4)


async def test_cluster_urls_make_a_cluster_client_with_every_startup_node(opened):
    client = opened("redis+cluster://:p%40ss@h1:7000,[::1]:7001,h3").client
    assert isinstance(client, RedisCluster)
    assert [(node.host, node.port) for node in client.startup_nodes] == [
        ("h1", 7000),
        ("::1", 7001),
        ("h3", 6379),
    ]
    kwargs = client.get_connection_kwargs()
    assert (kwargs["username"], kwargs["password"]) == (None, "p@ss")
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (1.0, 2.0)
    assert kwargs["connection_class"] is Connection
    assert client.retry.get_retries() == 1

    url = "rediss+cluster://relay:pw@h1:7000/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=optional"
    url += "&ssl_check_hostname=false&socket_timeout=0.5&socket_connect_timeout=0.25"
    kwargs = opened(url).client.get_connection_kwargs()
    assert (kwargs["username"], kwargs["password"]) == ("relay", "pw")
    assert kwargs["connection_class"] is SSLConnection
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_cert_reqs"]) == ("/ca.pem", "optional")
    assert kwargs["ssl_check_hostname"] is False
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (0.25, 0.5)


async def test_sentinel_urls_make_a_client_of_the_services_master(opened):
    client = opened("redis+sentinel://:pw@s1:26380,s2/my%20service/2?socket_timeout=0.5").client
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.is_master
    assert pool.service_name == "my service"
    assert pool.connection_class is SentinelManagedConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (2, "pw", 0.5)
    assert kwargs["retry"].get_retries() == 1
    assert sentinels(pool) == [
        {"host": h, "port": p, "password": None, "socket_timeout": 0.5, "socket_connect_timeout": 1}
        for h, p in [("s1", 26380), ("s2", 26379)]
    ]

    tls = opened("rediss+sentinel://s1/svc?ssl_ca_certs=/ca.pem").client.connection_pool
    assert tls.connection_class is SentinelManagedSSLConnection
    assert tls.connection_kwargs["db"] == 0
    assert tls.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    (sentinel,) = tls.sentinel_manager.sentinels
    assert sentinel.connection_pool.connection_class is SSLConnection
    assert sentinel.connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"


@pytest.mark.parametrize(
    "url",
    [
        "redis://h",
        "rediss://h",
        "unix:///s.sock",
        "redis+cluster://h:7000",
        "rediss+cluster://h:7000",
        "redis+sentinel://h:26379/svc",
        "rediss+sentinel://h:26379/svc/1",
    ],
)
async def test_every_redis_url_form_is_a_known_scheme_and_opens_a_redis_store(opened, url):
    assert url.startswith(REDIS_SCHEMES)
    store = opened(url, prefix="p:")
    assert isinstance(store, RedisStore)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://", "no host"),
        ("redis+cluster://:s3cret@", "no host"),
        ("redis+cluster://:s3cret@/svc", "no host"),
        ("redis+cluster://s3cret@h:1", "':password@' or 'user:password@'"),
        ("redis+cluster://:s3cret@h:port", "'h:port': the port must be a number"),
        ("redis+cluster://:s3cret@h:0", "the port must be a number from 1 to 65535"),
        ("redis+cluster://:s3cret@h:65536", "the port must be a number from 1 to 65535"),
        ("redis+cluster://:s3cret@h:1,,h:2", "an empty entry in the host list"),
        ("redis+cluster://:s3cret@:1", "':1': no host name"),
        ("redis+cluster://:s3cret@::1:6379", "brackets"),
        ("redis+cluster://:s3cret@[::1:6379", "brackets"),
        ("redis+cluster://:s3cret@[::1]6379", "expected ':port' after ']'"),
        ("redis+cluster://:s3cret@h:1/2", "database 0 only"),
        ("redis+cluster://:s3cret@h:1?ssl_ca_certs=/ca.pem", "needs TLS: use rediss\\+cluster"),
        ("redis+cluster://:s3cret@h:1?db=2", "unknown option 'db'"),
        ("redis+cluster://:s3cret@h:1?socket_timeout=soon", "positive number of seconds"),
        ("redis+cluster://:s3cret@h:1?socket_timeout=0", "positive number of seconds"),
        ("rediss+cluster://:s3cret@h:1?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
        ("rediss+cluster://:s3cret@h:1?ssl_check_hostname=perhaps", "true or false"),
        ("redis+cluster://:s3#cret@h:1", "'#' is not allowed"),
        ("redis+sentinel://:s3cret@h:1", "no service name"),
        ("redis+sentinel://:s3cret@h:1/", "no service name"),
        ("redis+sentinel://:s3cret@h:1/svc/x", "the database must be a number, not 'x'"),
        ("redis+sentinel://:s3cret@h:1/svc/1/2", "the database must be a number, not '1/2'"),
        ("rediss+sentinel://:s3cret@h:1/svc?db=1", "unknown option 'db'"),
        ("redis+foo://:s3cret@h:1", "unknown store"),
        ("postgres://u:s3cret@db", "unknown store 'postgres://u:\\*\\*\\*@db'"),
    ],
)
def test_malformed_urls_are_refused_by_name_without_the_password(url, problem):
    with pytest.raises(ValueError, match=problem) as caught:
        open_store(url, max_vni=10)
    assert "s3cret" not in str(caught.value) and "s3#cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://:s3cret?x@redis:6379/0", "Port could not be cast to integer .* '\\*\\*\\*'"),
        ("redis:/:s3cret@redis:6379", "unknown store 'redis:\\*\\*\\*@redis:6379'"),
        ("redis+sentinel://:s3cret?@", "':\\*\\*\\*': no host name"),
        ("redis+cluster://user:pw?s3cret@h", "'user:\\*\\*\\*': the port must be a number"),
        ("redis+cluster://h?:s3cret@x", "unknown option ':\\*\\*\\*@x'"),
    ],
)
def test_a_password_that_breaks_the_url_is_not_shown_either(url, problem):
    for check in (check_store_url, lambda url: open_store(url, max_vni=10)):
        with pytest.raises(ValueError, match=problem) as caught:
            check(url)
        assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("url", ["unix://?max_connections=-1", "redis://h?max_connections=-1"])
def test_check_store_url_refuses_what_open_store_refuses(url):
    for check in (check_store_url, lambda url: open_store(url, max_vni=10)):
        with pytest.raises(ValueError, match='"max_connections" must be a positive integer'):
            check(url)
