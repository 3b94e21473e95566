"""The gateway's own OAuth client for MCP upstreams, end to end: `mcp_upstream.py --oauth` is a
real MCP server (official Python SDK) that is also its own authorization server for the client
credentials grant and requires its bearer tokens on /mcp. tollgate is configured with `oauth:`
for it; the official Python MCP client talks to tollgate with a virtual key. The upstream's
`/oauth/stats` hook shows what reached it: the token requests, and the Authorization headers on
/mcp (never the client's key, always a token it issued)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import CONFIG_HEAD, MASTER_KEY, Gateway, launch_gateway, new_key
from mcp import MCPError
from mcp_client_util import Upstream, connect, start_upstream, text_of

pytestmark = pytest.mark.anyio

CLIENT_ID = "gw-client"
# Characters that client_secret_basic must form-urlencode before base64 (RFC 6749 2.3.1).
CLIENT_SECRET = "gw s3cret:&=/%+"
SECRET_ENV = "E2E_MCP_OAUTH_SECRET"
SCOPE = "tools.read tools.call"
ACCEPT = "application/json, text/event-stream"

CONFIG = CONFIG_HEAD + """\
logging:
  level: warn
mcp:
  servers:
    - name: secured
      url: {url}
      oauth:
        token_url: {token_url}
        client_id: {client_id}
        client_secret: {client_secret}
        scope: {scope}
        audience: {audience}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def stats(up: Upstream) -> dict:
    res = httpx.get(f"{up.base_url}/oauth/stats", timeout=10)
    res.raise_for_status()
    return res.json()


def expected_form(up: Upstream) -> dict[str, str]:
    return {"grant_type": "client_credentials", "scope": SCOPE, "resource": up.url, "audience": up.url}


@contextmanager
def oauth_upstream(lifetime: int | None = None) -> Iterator[Upstream]:
    extra = ["--oauth", f"{CLIENT_ID}:{CLIENT_SECRET}"]
    if lifetime is not None:
        extra += ["--token-lifetime", str(lifetime)]
    with start_upstream("streamable-http", name="secured", extra_args=extra) as up:
        yield up


@contextmanager
def oauth_gateway(workdir: Path, up: Upstream, client_secret: str = f"${{{SECRET_ENV}}}") -> Iterator[Gateway]:
    """A gateway whose only MCP server is `up`, with OAuth. The default secret is read from the
    environment through `${...}` interpolation (the test sets it with monkeypatch)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = CONFIG.format(
        master=MASTER_KEY,
        db=workdir / "tollgate.db",
        url=json.dumps(up.url),
        token_url=json.dumps(f"{up.base_url}/token"),
        client_id=json.dumps(CLIENT_ID),
        client_secret=json.dumps(client_secret),
        scope=json.dumps(SCOPE),
        audience=json.dumps(up.url),
    )
    with launch_gateway(workdir, config) as gw:
        yield gw


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with oauth_upstream() as up:
        yield up


@pytest.fixture
def gateway_for(tmp_path: Path, upstream: Upstream, secret_env: None) -> Iterator[Gateway]:
    with oauth_gateway(tmp_path / "good", upstream) as gw:
        yield gw


def mcp_errors(exc: BaseException) -> list[MCPError]:
    """The MCPErrors in `exc`, looking inside exception groups and causes."""
    if isinstance(exc, MCPError):
        return [exc]
    found: list[MCPError] = []
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found += mcp_errors(inner)
    if exc.__cause__ is not None:
        found += mcp_errors(exc.__cause__)
    return found


async def test_gateway_fetches_a_token_and_sends_it_upstream(upstream: Upstream, gateway_for: Gateway) -> None:
    gw = gateway_for
    key = new_key(gw)["secret"]
    async with connect(f"{gw.origin}/mcp", auth(key)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "echo" in names, (names, gw.logs())
        assert text_of(await client.call_tool("echo", {"text": "through oauth"})) == "through oauth"

    seen = stats(upstream)
    assert seen["tokens_issued"] == 1, seen
    assert seen["token_requests"] == 1, seen
    assert seen["last_form"] == expected_form(upstream), seen
    # Every request on /mcp carried the issued token, and nothing else: not the client's key.
    assert seen["bearer_seen"] == [f"Bearer {seen['issued'][0]}"], seen
    assert not any(key in value for value in seen["bearer_seen"]), seen
    assert seen["rejected"] == 0, seen


async def test_the_token_is_cached_and_shared_across_sessions(upstream: Upstream, gateway_for: Gateway) -> None:
    gw = gateway_for
    keys = [new_key(gw)["secret"] for _ in range(3)]

    async def session(key: str, text: str) -> None:
        async with connect(f"{gw.origin}/mcp", auth(key)) as client:
            assert text_of(await client.call_tool("echo", {"text": text})) == text

    # Two sessions of two principals at once (one token fetch between them), then a third later.
    async with anyio.create_task_group() as tg:
        tg.start_soon(session, keys[0], "first")
        tg.start_soon(session, keys[1], "second")
    await session(keys[2], "third")

    seen = stats(upstream)
    assert seen["tokens_issued"] == 1, seen
    assert seen["token_requests"] == 1, seen
    assert seen["bearer_seen"] == [f"Bearer {seen['issued'][0]}"], seen
    assert seen["rejected"] == 0, seen


async def test_a_refused_token_is_renewed_and_the_call_retried(upstream: Upstream, gateway_for: Gateway) -> None:
    gw = gateway_for
    key = new_key(gw)["secret"]
    async with connect(f"{gw.origin}/mcp", auth(key)) as client:
        assert text_of(await client.call_tool("echo", {"text": "before"})) == "before"
        assert stats(upstream)["tokens_issued"] == 1

        revoked = httpx.post(f"{upstream.base_url}/oauth/revoke-all", timeout=10)
        assert revoked.status_code == 200 and revoked.json()["revoked"] == 1

        # The upstream answers 401; the gateway forgets the token, gets a new one, retries once.
        after = await client.call_tool("echo", {"text": "after"})
        assert not after.is_error and text_of(after) == "after", (after, gw.logs())

    seen = stats(upstream)
    assert seen["tokens_issued"] == 2, seen
    assert seen["rejected"] >= 1, seen
    first, second = seen["issued"]
    assert seen["bearer_seen"] == [f"Bearer {first}", f"Bearer {second}"], seen
    assert seen["last_form"] == expected_form(upstream), seen

    # A new session gets the renewed token from the cache.
    async with connect(f"{gw.origin}/mcp", auth(new_key(gw)["secret"])) as client:
        assert text_of(await client.call_tool("echo", {"text": "again"})) == "again"
    assert stats(upstream)["tokens_issued"] == 2


async def test_wrong_client_secret_fails_initialize(
    tmp_path: Path, upstream: Upstream, gateway_for: Gateway
) -> None:
    wrong_secret = "not-the-secret-4f9a"
    with oauth_gateway(tmp_path / "wrong", upstream, client_secret=wrong_secret) as bad:
        key = new_key(bad)["secret"]
        # The SDK client raises (it must not hang waiting for an answer).
        with anyio.fail_after(60):
            with pytest.raises(Exception) as failed:
                async with connect(f"{bad.origin}/mcp", auth(key), timeout=20) as client:
                    await client.list_tools()
        errors = mcp_errors(failed.value)
        assert errors, f"expected an MCPError, got {failed.value!r}"
        assert errors[0].error.code == -32010, errors[0].error

        # On the wire: 502 with the JSON-RPC error for an unavailable upstream.
        res = httpx.post(
            f"{bad.origin}/mcp",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
            },
            headers={**auth(key), "Accept": ACCEPT},
            timeout=30,
        )
        assert res.status_code == 502, (res.status_code, res.text)
        body = res.json()
        assert body["error"]["code"] == -32010, body
        assert wrong_secret not in res.text

        seen = stats(upstream)
        assert seen["token_requests"] >= 1 and seen["tokens_issued"] == 0, seen
        assert seen["last_form"] == expected_form(upstream), seen
        # Without a token the gateway never reached /mcp; the client's key never went upstream.
        assert seen["bearer_seen"] == [] and seen["rejected"] == 0, seen
        assert wrong_secret not in bad.logs(), "the client secret must not be logged"

    # The well-configured gateway on the same upstream is unaffected.
    async with connect(f"{gateway_for.origin}/mcp", auth(new_key(gateway_for)["secret"])) as client:
        assert text_of(await client.call_tool("echo", {"text": "fine"})) == "fine"
    seen = stats(upstream)
    assert seen["tokens_issued"] == 1 and seen["rejected"] == 0, seen


async def test_a_token_is_renewed_30s_before_it_expires(tmp_path: Path, secret_env: None) -> None:
    # expires_in 31: the gateway treats the token as stale 1 s after it got it (31 s - 30 s),
    # while the upstream would still accept it for 31 s, so the renewal is proactive (no 401).
    with oauth_upstream(lifetime=31) as up, oauth_gateway(tmp_path / "short", up) as gw:
        key = new_key(gw)["secret"]
        started = time.monotonic()  # before the first token can have been issued
        async with connect(f"{gw.origin}/mcp", auth(key)) as client:
            deadline = started + 15
            calls = 0
            while True:
                calls += 1
                assert text_of(await client.call_tool("echo", {"text": f"call {calls}"})) == f"call {calls}"
                seen = stats(up)
                if seen["tokens_issued"] >= 2:
                    break
                assert time.monotonic() < deadline, f"no renewal within 15 s: {seen}\n{gw.logs()}"
                await anyio.sleep(0.05)  # poll interval, not a wait for the expiry
            elapsed = time.monotonic() - started

        assert elapsed >= 1.0, f"renewed after {elapsed:.2f}s, before the token went stale"
        assert seen["tokens_issued"] == 2 and seen["rejected"] == 0, seen
        first, second = seen["issued"]
        assert seen["bearer_seen"] == [f"Bearer {first}", f"Bearer {second}"], seen
