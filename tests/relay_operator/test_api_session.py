"""relay_operator/api_session.py: kopf's credentials over a pool of bounded size."""

import kopf

from relay_operator.api_session import API_CONNECTIONS, bounded_session


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
