"""Bad input at the tool layer's front door, on the wire: oversized messages (declared and
chunked), a deterministic corpus of malformed JSON-RPC, expired sessions, and sessions that
must not see each other. Each gets the spec's status and a JSON-RPC error body; the gateway
keeps serving and nothing crosses between sessions."""

from __future__ import annotations

import json
import random
import time

import httpx
import pytest
from conftest import CONFIG_HEAD, MASTER_KEY, Gateway, launch_gateway, new_key
from mcp_client_util import start_upstream
from test_mcp_gateway import ACCEPT, auth, initialize, post

CONFIG = CONFIG_HEAD + """\
logging:
  level: warn
limits:
  max_body_size: 64KiB
mcp:
  session_idle_timeout: 5s
  servers:
    - name: files
      url: {files}
"""

PING = {"jsonrpc": "2.0", "id": 7, "method": "ping"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("tollgate-mcp-bad-input")
    with start_upstream("streamable-http", name="files") as files:
        config = CONFIG.format(master=MASTER_KEY, db=workdir / "tollgate.db", files=files.url)
        with launch_gateway(workdir, config) as gw:
            yield gw


def alive(gw: Gateway) -> None:
    assert httpx.get(f"{gw.origin}/healthz", timeout=10).status_code == 200


def is_jsonrpc_error(res: httpx.Response) -> bool:
    body = res.json()
    return body.get("jsonrpc") == "2.0" and isinstance(body.get("error", {}).get("code"), int)


def test_oversized_messages_are_refused_declared_or_chunked(gw: Gateway) -> None:
    key = new_key(gw)["secret"]
    session = initialize(gw, "/mcp", auth(key))
    headers = {**auth(key), "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
    big = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": "echo", "arguments": {"text": "x" * 100_000}}}
    res = post(gw, "/mcp", big, headers)
    assert res.status_code == 413 and is_jsonrpc_error(res)

    # No Content-Length: the limit holds while the body streams in.
    def chunks():
        body = json.dumps(big).encode()
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    res = httpx.post(
        f"{gw.origin}/mcp",
        content=chunks(),
        headers={**headers, "Accept": ACCEPT, "Content-Type": "application/json"},
        timeout=30,
    )
    assert res.status_code == 413 and is_jsonrpc_error(res)
    # The session is unharmed.
    res = post(gw, "/mcp", PING, headers)
    assert res.status_code == 200 and res.json()["result"] == {}


def malformed_corpus() -> list[bytes]:
    """Deterministic: hand-written shapes, then random mutations of valid messages."""
    valid = [
        PING,
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}},
        {"jsonrpc": "2.0", "id": "a", "method": "tools/list", "params": {"cursor": "x"}},
    ]
    shapes: list = [
        {"jsonrpc": "1.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": 42},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": "nope"},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 5}},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": [1, 2]}},
        {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": None}},
        {"jsonrpc": "2.0", "id": 1, "method": "completion/complete", "params": {"ref": "bad"}},
        {"jsonrpc": "2.0", "id": 1e308, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": "no/such/method"},
        {"jsonrpc": "2.0", "id": 1, "result": {}},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": "x"}},
        {"jsonrpc": "2.0"},
        [],
        "string",
        None,
        12,
    ]
    out = [json.dumps(s).encode() for s in shapes]
    out += [b"[" * 5000 + b"]" * 5000, b'{"jsonrpc": "2.0", "id": 1, "method": "\xff\xfe"}', b"", b"\x00" * 64]
    rng = random.Random(20261124)
    for _ in range(150):
        data = bytearray(json.dumps(rng.choice(valid)).encode())
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos : pos + rng.randint(1, 8)]
            else:
                data[pos:pos] = rng.choice([b"{", b"}", b'"', b",", b"[", b"\\u0000", b"null"])
        out.append(bytes(data))
    return out


def test_malformed_messages_get_json_rpc_errors_and_nothing_crashes(gw: Gateway) -> None:
    key = new_key(gw)["secret"]
    session = initialize(gw, "/mcp", auth(key))
    headers = {**auth(key), "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
    statuses: dict[int, int] = {}
    for body in malformed_corpus():
        res = post(gw, "/mcp", body, headers)
        statuses[res.status_code] = statuses.get(res.status_code, 0) + 1
        assert res.status_code < 500, (body[:200], res.status_code, res.text)
        if res.status_code == 202:
            continue  # a well-formed response or notification: accepted, nothing to answer
        assert res.headers["content-type"].startswith(("application/json", "text/event-stream")), body[:200]
        if res.headers["content-type"].startswith("application/json"):
            answer = res.json()
            assert answer.get("jsonrpc") == "2.0", (body[:200], answer)
    assert statuses.get(400, 0) > 50, statuses
    alive(gw)
    res = post(gw, "/mcp", PING, headers)
    assert res.status_code == 200 and res.json()["result"] == {}


def test_sessions_expire_and_do_not_cross(gw: Gateway) -> None:
    alice, bob = new_key(gw)["secret"], new_key(gw)["secret"]
    a = initialize(gw, "/mcp", auth(alice))
    b = initialize(gw, "/mcp", auth(bob))
    a_headers = {**auth(alice), "Mcp-Session-Id": a, "MCP-Protocol-Version": "2025-06-18"}
    # Bob cannot post to, stream from, resume or end Alice's session.
    crossed = {**auth(bob), "Mcp-Session-Id": a, "MCP-Protocol-Version": "2025-06-18"}
    assert post(gw, "/mcp", PING, crossed).status_code == 404
    crossed["Accept"] = "text/event-stream"
    assert httpx.get(f"{gw.origin}/mcp", headers=crossed, timeout=10).status_code == 404
    assert httpx.get(f"{gw.origin}/mcp", headers={**crossed, "Last-Event-ID": "0.0"}, timeout=10).status_code == 404
    assert httpx.delete(f"{gw.origin}/mcp", headers=crossed, timeout=10).status_code == 404
    # An answer to a server request Alice's session never made goes nowhere (202, dropped).
    stray = {"jsonrpc": "2.0", "id": "tg-1", "result": {"action": "accept"}}
    res = post(gw, "/mcp", stray, {**auth(bob), "Mcp-Session-Id": b, "MCP-Protocol-Version": "2025-06-18"})
    assert res.status_code == 202
    assert post(gw, "/mcp", PING, a_headers).status_code == 200

    # Unused for longer than session_idle_timeout (5s, long enough that a loaded machine never
    # expires a session between two requests of the other tests): gone, with the spec's 404.
    # The sessions gauge is watched (a request would keep the session alive).
    assert open_sessions(gw) >= 2
    deadline = time.monotonic() + 40
    while open_sessions(gw) > 0:  # every session of this module is idle now
        assert time.monotonic() < deadline, "the idle sessions never expired"
        time.sleep(0.2)
    for who, sid in ((alice, a), (bob, b)):
        res = post(gw, "/mcp", PING, {**auth(who), "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"})
        assert res.status_code == 404 and res.json()["error"]["code"] == -32001
    alive(gw)


def open_sessions(gw: Gateway) -> int:
    res = httpx.get(f"{gw.origin}/metrics", headers={"Authorization": f"Bearer {gw.master_key}"}, timeout=10)
    assert res.status_code == 200, res.text
    line = next(l for l in res.text.splitlines() if l.startswith("tollgate_mcp_sessions "))
    return int(float(line.split()[1]))
