"""relay_operator/api_session.py: kopf's credentials over a pool of bounded size, and when
its requests waited for a connection."""

import asyncio

import kopf
from aiohttp import web

from relay_operator.api_session import API_CONNECTIONS, ConnectionWaits, bounded_session
from tests.support.waiting import wait_until


async def test_the_session_keeps_the_credentials_and_bounds_its_connections():
    info = kopf.ConnectionInfo(
        server="https://127.0.0.1:6443", token="t0ken", default_namespace="fleet", priority=5
    )
    context = bounded_session(info)
    try:
        assert isinstance(context, kopf.AiohttpSession)
        assert (context.server, context.default_namespace, context.priority) == (
            "https://127.0.0.1:6443",
            "fleet",
            5,
        )
        session = context.aiohttp_session
        assert session.connector.limit == API_CONNECTIONS
        assert session.headers["Authorization"] == "Bearer t0ken"
    finally:
        await context.aiohttp_session.close()


async def test_a_request_waiting_for_a_connection_of_the_pool_is_told():
    """A real server on loopback and a pool of one connection: one request at a time waits for
    nothing; a second one while the first is answered waits, and says so."""
    answer = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await answer.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    clock = iter(range(1, 100))
    waits = ConnectionWaits(clock=lambda: float(next(clock)))
    info = kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}")
    context = bounded_session(info, limit=1, waits=waits)
    session = context.aiohttp_session
    url = f"http://127.0.0.1:{port}/"
    try:
        answer.set()
        for _ in range(2):
            async with session.get(url) as response:
                assert await response.text() == "ok"
        assert waits.last is None
        answer.clear()
        arrived.clear()
        first = asyncio.create_task(session.get(url))
        await arrived.wait()
        second = asyncio.create_task(session.get(url))
        await wait_until(lambda: waits.last is not None, "the second request to wait")
        assert waits.last == 1.0  # began waiting
        answer.set()
        for task in (first, second):
            response = await task
            assert await response.text() == "ok"
            response.release()
        assert waits.last == 2.0  # got its connection
    finally:
        await session.close()
        await runner.cleanup()
