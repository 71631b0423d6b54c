"""The API's bearer token: allocation behind it, probes and metrics open, a bad file refused."""

from __future__ import annotations

import pytest

from relay.config import RelayConfig
from relay.flags import add_arguments
from relay.protocol.keys import DiscoPrivateKey
from relay.shells.api_token import refusal
from tests.relay.relay_process import RelayProcess
from tests.relay.test_cli import run

TOKEN = "0123456789abcdef-token"
GUARDED = [("POST", "/v0/relay/endpoint"), ("GET", "/v0/relay/endpoints")]


def new_keys() -> list[str]:
    return [str(DiscoPrivateKey.generate().public) for _ in range(2)]


async def call(h, method: str, path: str, authorization: str | None = None):
    headers = {"Authorization": authorization} if authorization is not None else {}
    body = {"DiscoKeys": new_keys()} if method == "POST" else None
    async with h.session.request(method, f"{h.api}{path}", json=body, headers=headers) as response:
        return response.status, await response.text(), response.headers


@pytest.fixture
async def guarded(relay_factory):
    return await relay_factory("127.0.0.1", api_token=TOKEN)


def test_the_api_listens_on_loopback_by_default():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, RelayConfig, {})
    assert parser.parse_args([]).api_listen == ("127.0.0.1", 8080)
    assert RelayConfig().api_listen == ("127.0.0.1", 8080)
    assert parser.parse_args([]).api_token_file is None


@pytest.mark.parametrize(("method", "path"), GUARDED)
async def test_without_a_token_configured_the_api_is_open(relay_factory, method, path):
    h = await relay_factory("127.0.0.1")
    status, _, _ = await call(h, method, path)
    assert status == 200


@pytest.mark.parametrize(("method", "path"), GUARDED)
@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "missing 'Authorization: Bearer <token>' header"),
        ("", "missing 'Authorization: Bearer <token>' header"),
        ("Bearer not-the-token", "wrong bearer token"),
        (f"Bearer {TOKEN}x", "wrong bearer token"),
        (f"Bearer {TOKEN[:-1]}", "wrong bearer token"),
        (f"Basic {TOKEN}", "the Authorization header must be 'Bearer <token>'"),
        ("Bearer ", "the Authorization header must be 'Bearer <token>'"),
        (TOKEN, "the Authorization header must be 'Bearer <token>'"),
    ],
    ids=["absent", "empty", "wrong", "longer", "shorter", "basic", "no-token", "no-scheme"],
)
async def test_a_missing_or_wrong_token_answers_401(guarded, method, path, authorization, reason):
    status, text, headers = await call(guarded, method, path, authorization)
    assert status == 401
    assert text == reason + "\n"
    assert headers["WWW-Authenticate"] == "Bearer"
    assert headers["Content-Type"].startswith("text/plain")
    assert len(guarded.server.core) == 0


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_the_right_token_is_let_in(guarded, scheme):
    status, text, _ = await call(guarded, "POST", "/v0/relay/endpoint", f"{scheme} {TOKEN}")
    assert status == 200, text
    status, text, _ = await call(guarded, "GET", "/v0/relay/endpoints", f"{scheme} {TOKEN}")
    assert status == 200
    assert '"VNI": 1' in text


async def test_the_token_is_checked_before_the_request(guarded):
    async with guarded.session.post(
        f"{guarded.api}/v0/relay/endpoint", data="not json"
    ) as response:
        assert response.status == 401


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
async def test_health_and_metrics_stay_open(guarded, path):
    status, text, _ = await call(guarded, "GET", path)
    assert status == 200
    assert text


def test_refusal_lets_in_only_the_exact_token():
    assert refusal(f"Bearer {TOKEN}", TOKEN) is None
    assert refusal(f"  Bearer   {TOKEN}  ", TOKEN) is None
    assert refusal(f"Bearer {TOKEN.upper()}", TOKEN) == "wrong bearer token"


async def test_the_token_file_comes_from_the_environment_and_guards_a_real_relay(tmp_path):
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    relay = await RelayProcess.start(env={"RELAYFLEET_API_TOKEN_FILE": str(token_file)})
    try:
        status, text = await relay.allocate(new_keys())
        assert (status, text) == (401, "missing 'Authorization: Bearer <token>' header\n")
        status, text = await relay.allocate(new_keys(), token="guess")
        assert (status, text) == (401, "wrong bearer token\n")
        status, body = await relay.allocate(new_keys(), token=TOKEN)
        assert status == 200 and body["VNI"] == 1
    finally:
        code, log = await relay.stop()
    assert code == 0
    assert TOKEN not in log


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read API token file {path}: No such file or directory"),
        ("", "API token file {path} is empty"),
        ("  \n", "API token file {path} is empty"),
        (
            "two words\n",
            "API token file {path}: the token must be one word of printable ASCII "
            "(it travels in an HTTP header)",
        ),
    ],
    ids=["missing", "empty", "blank", "two-words"],
)
def test_a_bad_token_file_is_a_clear_startup_error(tmp_path, content, message):
    path = tmp_path / "api-token"
    if content is not None:
        path.write_text(content)
    result = run(
        "relay", "--port", "0", "--api-listen", "127.0.0.1:0", "--api-token-file", str(path)
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith("relayfleet relay: " + message.format(path=path))
    assert "Traceback" not in result.stderr
    assert "two words" not in result.stderr


@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "token"])
async def test_an_api_beyond_loopback_without_a_token_is_warned_about(tmp_path, with_token):
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN)
    extra = ["--api-token-file", str(token_file)] if with_token else []
    relay = await RelayProcess.start("--api-listen", "0.0.0.0:0", *extra)
    code, log = await relay.stop()
    assert code == 0
    assert ("without --api-token-file" in log) is not with_token


def test_a_header_that_is_not_utf8_is_refused_not_an_error():
    assert refusal("Bearer \udcff", "secret") == "wrong bearer token"
