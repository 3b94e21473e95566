"""MCP sessions outlive the replica that opened them: two tollgate processes share one PostgreSQL
database and one Redis; the official MCP SDK client talks through a load balancer (a TCP proxy
here). When the replica holding the session is killed, the client's next calls reach the other
replica, which reopens the session from its sealed id and carries on. A session the client
deleted is never reopened, by any replica (a third replica checks that).

The scratch database and Redis prefix come from the `stores` fixture of e2e/shared_stores.py
(PostgreSQL at 127.0.0.1:5432, Redis at 127.0.0.1:6379), removed at the end of the module.
Without the services the module is skipped, or fails with TOLLGATE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import anyio
import httpx
import pytest
from conftest import MASTER_KEY, Gateway, launch_gateway, new_key
from mcp_client_util import connect, start_upstream, text_of
from shared_stores import REDIS_HOST, REDIS_PORT, Stores, stores  # noqa: F401

pytestmark = pytest.mark.anyio

ACCEPT = "application/json, text/event-stream"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Balancer:
    """A TCP proxy sending each new connection to the current backend port."""

    def __init__(self) -> None:
        self.backend = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


CONFIG = """\
listen: 127.0.0.1:0
master_key: {master}
storage:
  database_url: {database_url}
  redis_url: redis://{redis_host}:{redis_port}/
  redis_prefix: "{prefix}"
logging:
  level: info
mcp:
  servers:
    - name: files
      url: {files}
"""


@pytest.fixture
def replicas(tmp_path: Path, stores: Stores) -> Iterator[tuple[Gateway, Gateway, Gateway]]:
    """Three replicas on the module's scratch database and Redis prefix (whose keys the
    `stores` fixture deletes at the end of the module), each in its own working directory."""
    with ExitStack() as stack:
        files = stack.enter_context(start_upstream("streamable-http", name="files"))
        config = CONFIG.format(
            master=MASTER_KEY,
            database_url=stores.database_url,
            redis_host=REDIS_HOST,
            redis_port=REDIS_PORT,
            prefix=stores.redis_prefix,
            files=files.url,
        )
        gws = []
        for name in ("a", "b", "c"):
            work = tmp_path / name
            work.mkdir()
            gws.append(stack.enter_context(launch_gateway(work, config)))
        yield gws[0], gws[1], gws[2]


def _rpc(gw: Gateway, key: str, session: str | None, method: str, params: dict | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Accept": ACCEPT, "MCP-Protocol-Version": "2025-06-18"}
    if session:
        headers["Mcp-Session-Id"] = session
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    return httpx.post(f"{gw.origin}/mcp", json=body, headers=headers, timeout=30)


def _initialize(gw: Gateway, key: str) -> str:
    res = _rpc(
        gw,
        key,
        None,
        "initialize",
        {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}},
    )
    assert res.status_code == 200, res.text
    session = res.headers["mcp-session-id"]
    headers = {"Authorization": f"Bearer {key}", "Accept": ACCEPT, "Mcp-Session-Id": session,
               "MCP-Protocol-Version": "2025-06-18"}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert httpx.post(f"{gw.origin}/mcp", json=note, headers=headers, timeout=30).status_code == 202
    return session


def _known_everywhere(key: str, *gws: Gateway) -> None:
    """Waits until every replica accepts a key made through one of them."""
    for gw in gws:
        deadline = time.monotonic() + 5.0
        while httpx.get(f"{gw.base_url}/models", headers={"Authorization": f"Bearer {key}"}).status_code != 200:
            assert time.monotonic() < deadline, f"{gw.origin} does not know the key"
            time.sleep(0.05)


def _result(res: httpx.Response) -> dict:
    assert res.status_code == 200, res.text
    text = res.text
    if res.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        text = data[-1]
    return json.loads(text)


async def test_a_session_continues_through_another_replica_after_its_replica_is_killed(replicas) -> None:
    a, b, _ = replicas
    key = new_key(a)["secret"]
    _known_everywhere(key, b)
    balancer = Balancer()
    await balancer.start()
    balancer.backend = a.port
    try:
        async with connect(f"http://127.0.0.1:{balancer.port}/mcp", {"Authorization": f"Bearer {key}"}) as client:
            assert text_of(await client.call_tool("echo", {"text": "before"})) == "before"
            # The replica holding the session dies; the balancer sends new connections to B.
            a.kill()
            balancer.backend = b.port
            with anyio.fail_after(30):
                assert text_of(await client.call_tool("add", {"a": 2, "b": 3})) == "5"
                tools = await client.list_tools()
            assert {"echo", "add"} <= {t.name for t in tools.tools}
        assert "MCP session reopened on this replica" in b.logs()
    finally:
        await balancer.stop()


def test_a_session_is_reopened_only_by_its_owner_and_never_after_a_delete(replicas) -> None:
    a, b, c = replicas
    key = new_key(a)["secret"]
    other = new_key(a)["secret"]
    _known_everywhere(key, b, c)
    _known_everywhere(other, b, c)
    session = _initialize(a, key)
    # Any replica serves it (B reopens its own copy while A keeps one)...
    assert _result(_rpc(b, key, session, "tools/list"))["result"]["tools"]
    # ...to its owner only: another key gets the same answer as for a missing session.
    refused = _rpc(b, other, session, "tools/list")
    assert refused.status_code == 404, refused.text
    # A tampered id is not a session either.
    forged = _rpc(c, key, session[:-2] + ("AA" if not session.endswith("AA") else "BB"), "tools/list")
    assert forged.status_code == 404, forged.text
    # The client ends it through B: A drops its copy, and C will not reopen it.
    headers = {"Authorization": f"Bearer {key}", "Mcp-Session-Id": session}
    assert httpx.delete(f"{b.origin}/mcp", headers=headers, timeout=30).status_code == 200
    # (A hears of the delete over Redis pub/sub: allow it a moment.)
    for gw in (a, b, c):
        deadline = time.monotonic() + 1.0
        while (res := _rpc(gw, key, session, "tools/list")).status_code != 404:
            assert time.monotonic() < deadline, f"{gw.origin}: {res.status_code} {res.text}"
            time.sleep(0.02)
