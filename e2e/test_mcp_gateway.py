"""The tool layer end to end: the official MCP Python SDK (`mcp` 2.x) talks to tollgate, which
federates real MCP servers built with the same SDK (`mcp_upstream.py`) over Streamable HTTP, the
legacy HTTP+SSE transport and stdio. Policy, audit, sessions and the transport's refusals are
checked on the wire."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import anyio
import httpx
import pytest
from conftest import CONFIG_HEAD, MASTER_KEY, Gateway, _binary, launch_gateway, new_key
from mcp import MCPError
from mcp.types import TextResourceContents
from mcp_client_util import (
    UPSTREAM_SCRIPT,
    connect,
    elicitation_reply,
    free_port,
    sampling_reply,
    start_upstream,
    text_of,
)

pytestmark = pytest.mark.anyio

ACCEPT = "application/json, text/event-stream"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


CONFIG = CONFIG_HEAD + """\
logging:
  level: warn
mcp:
  prefix: conditional
  servers:
    - name: files
      url: {files}
      headers: {{Authorization: "Bearer files-upstream-secret"}}
    - name: other
      url: {other}
    - name: local
      command: {python}
      args: [{script}, --transport, stdio, --name, local]
      env: {{PYTHONUNBUFFERED: "1"}}
    - name: legacy
      transport: sse
      url: {legacy}
  virtual_servers:
    - name: public
      servers: [files]
      auth: none
    - name: local-only
      servers: [local]
    - name: legacy-only
      servers: [legacy]
  quotas:
    - name: add-per-minute
      match: ["files/add"]
      per_minute: 2
    - name: one-count-at-a-time
      match: ["*/slow_count"]
      per: server
      concurrent: 1
policies:
  - name: tools
    applies_to: "request.layer == 'tool'"
    rules:
      - name: data-only
        when: "request.tool == 'read_file' && !request.args.path.startsWith('/data/')"
        action: deny
        reason: only /data is readable
      - name: small-payments
        when: "request.tool == 'pay' && request.args.amount <= 100"
        action: allow
      - name: no-big-payments
        when: "request.tool == 'pay'"
        action: deny
        reason: payments over 100 need a human
      - name: no-whoami-for-anonymous
        when: "request.tool == 'whoami' && principal.name == 'anonymous'"
        action: deny
      - name: everything-else
        when: "true"
        action: allow
"""


@pytest.fixture(scope="module")
def mcp_gateway(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("tollgate-mcp")
    with (
        start_upstream("streamable-http", name="files") as files,
        start_upstream("streamable-http", name="other", variant="b") as other,
        start_upstream("sse", name="legacy") as legacy,
    ):
        config = CONFIG.format(
            master=MASTER_KEY,
            db=workdir / "tollgate.db",
            files=files.url,
            other=other.url,
            legacy=legacy.url,
            python=json.dumps(sys.executable),
            script=json.dumps(str(UPSTREAM_SCRIPT)),
        )
        with launch_gateway(workdir, config) as gw:
            yield gw


@pytest.fixture(scope="module")
def key(mcp_gateway: Gateway) -> str:
    return new_key(mcp_gateway)["secret"]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def audit_records(gw: Gateway) -> list[dict]:
    out = subprocess.run(
        [str(_binary()), "audit", "--config", str(gw.config_path), "export"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def test_federation_names_and_routes_every_transport(mcp_gateway: Gateway, key: str) -> None:
    async with connect(f"{mcp_gateway.origin}/mcp", auth(key)) as client:
        assert client.server_info is not None and client.server_info.name == "tollgate"
        names = {t.name for t in (await client.list_tools()).tools}
        # Three servers share variant a's tools: those names are prefixed; unique ones are not.
        assert {"files_whoami", "local_whoami", "legacy_whoami"} <= names
        assert {"files_echo", "other_echo", "local_echo", "legacy_echo", "only_b"} <= names
        assert "echo" not in names and "whoami" not in names
        # Each call reaches its owner: HTTP, HTTP, stdio and the legacy SSE transport.
        assert text_of(await client.call_tool("files_whoami")) == "files"
        assert text_of(await client.call_tool("local_whoami")) == "local"
        assert text_of(await client.call_tool("legacy_whoami")) == "legacy"
        assert text_of(await client.call_tool("other_echo", {"text": "x"})) == "b:x"
        assert text_of(await client.call_tool("only_b")) == "b"
        added = await client.call_tool("files_add", {"a": 2, "b": 40})
        assert text_of(added) == "42" and added.structured_content == {"result": 42}
        with pytest.raises(MCPError) as err:
            await client.session.call_tool("no_such_tool", {})
        assert err.value.error.code == -32602


async def test_virtual_server_without_auth_and_list_filtering(mcp_gateway: Gateway) -> None:
    async with connect(f"{mcp_gateway.origin}/mcp/public") as client:
        assert client.server_info is not None and client.server_info.name == "tollgate/public"
        names = {t.name for t in (await client.list_tools()).tools}
        # One server: nothing collides, nothing is prefixed; policy hides whoami from anonymous.
        assert {"echo", "add", "read_file", "pay"} <= names
        assert "whoami" not in names
        assert text_of(await client.call_tool("echo", {"text": "hi"})) == "hi"
        denied = await client.session.call_tool("whoami", {})
        assert denied.is_error and "no-whoami-for-anonymous" in text_of(denied)


async def test_argument_policy_denies_with_a_tool_error(mcp_gateway: Gateway, key: str) -> None:
    async with connect(f"{mcp_gateway.origin}/mcp/public") as client:
        ok = await client.call_tool("read_file", {"path": "/data/report.txt"})
        assert not ok.is_error and text_of(ok) == "contents of /data/report.txt"
        denied = await client.call_tool("read_file", {"path": "/etc/passwd"})
        assert denied.is_error
        assert "tools/data-only" in text_of(denied) and "only /data is readable" in text_of(denied)
        assert text_of(await client.call_tool("pay", {"amount": 100, "to": "bob"})) == "paid 100.0 to bob"
        big = await client.call_tool("pay", {"amount": 100.5, "to": "bob"})
        assert big.is_error and "payments over 100 need a human" in text_of(big)

    def recorded() -> list[dict]:
        calls = [r for r in audit_records(mcp_gateway) if r["action"] == "mcp.tools/call"]
        denials = [r for r in calls if r["decision"] == "deny" and r["target"] == "files/read_file"]
        assert denials, calls
        return denials

    denial = eventually(recorded)[-1]
    detail = json.loads(denial["detail"]) if isinstance(denial["detail"], str) else denial["detail"]
    assert denial["principal"] == "anonymous" and denial["rule"] == "tools/data-only"
    assert denial["outcome"] == "denied"
    assert len(detail["args_sha256"]) == 64 and detail["server"] == "files"


async def test_progress_sampling_and_elicitation_relay(mcp_gateway: Gateway, key: str) -> None:
    for path, prefix in (("/mcp/public", ""), ("/mcp/local-only", ""), ("/mcp/legacy-only", "")):
        async with connect(
            f"{mcp_gateway.origin}{path}",
            auth(key),
            sampling=sampling_reply("sampled!"),
            elicitation=elicitation_reply("accept", {"ok": True}),
        ) as client:
            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            counted = await client.call_tool(f"{prefix}slow_count", {"n": 3}, progress_callback=on_progress)
            assert text_of(counted) == "counted 3", path
            assert seen == [1, 2, 3], (path, seen)
            answer = await client.call_tool(f"{prefix}ask_llm", {"question": "why?"})
            assert "sampled!" in text_of(answer), (path, text_of(answer))
            confirmed = await client.call_tool(f"{prefix}confirm", {"action": "deploy"})
            assert text_of(confirmed) == "confirmed", path


async def test_resources_prompts_and_templates(mcp_gateway: Gateway) -> None:
    async with connect(f"{mcp_gateway.origin}/mcp/public") as client:
        resources = (await client.list_resources()).resources
        assert [str(r.uri) for r in resources] == ["file:///docs/readme.md"]
        readme = (await client.read_resource("file:///docs/readme.md")).contents
        assert isinstance(readme[0], TextResourceContents) and readme[0].text == "hello from files"
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["file:///notes/{id}"]
        note = (await client.read_resource("file:///notes/7")).contents
        assert isinstance(note[0], TextResourceContents) and note[0].text == "note 7"
        prompts = (await client.list_prompts()).prompts
        assert [p.name for p in prompts] == ["greet"]
        greeting = await client.get_prompt("greet", {"name": "Ada"})
        assert greeting.messages[0].content.text == "Hello Ada"
    async with connect(f"{mcp_gateway.origin}/mcp/legacy-only", auth(new_key(mcp_gateway)["secret"])) as client:
        readme = (await client.read_resource("file:///docs/readme.md")).contents
        assert readme[0].text == "hello from legacy"


def post(gw: Gateway, path: str, body, headers: dict[str, str] | None = None) -> httpx.Response:
    base = {"Accept": ACCEPT, "Content-Type": "application/json"}
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{gw.origin}{path}", content=content, headers={**base, **(headers or {})}, timeout=30)


def initialize(gw: Gateway, path: str, headers: dict[str, str], version: str = "2025-06-18") -> str:
    res = post(
        gw,
        path,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
        },
        headers,
    )
    assert res.status_code == 200, res.text
    assert res.json()["result"]["protocolVersion"] == version
    return res.headers["mcp-session-id"]


def test_transport_refusals_have_the_spec_status_and_shape(mcp_gateway: Gateway, key: str) -> None:
    gw = mcp_gateway
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}

    # No credential: 401, and the header that leads to the protected resource metadata.
    res = post(gw, "/mcp", ping)
    assert res.status_code == 401
    assert 'resource_metadata="' in res.headers["www-authenticate"]
    meta_url = res.headers["www-authenticate"].split('resource_metadata="')[1].rstrip('"')
    meta = httpx.get(meta_url, timeout=10).json()
    assert meta["resource"] == f"{gw.origin}/mcp" and meta["bearer_methods_supported"] == ["header"]

    # DNS rebinding: a foreign Origin is refused before anything else.
    res = post(gw, "/mcp/public", ping, {"Origin": "http://evil.example.com"})
    assert res.status_code == 403 and res.json()["error"]["code"] == -32600

    # Accept, content type, JSON and JSON-RPC shape.
    assert post(gw, "/mcp/public", ping, {"Accept": "text/html"}).status_code == 406
    assert post(gw, "/mcp/public", ping, {"Content-Type": "text/plain"}).status_code == 415
    res = post(gw, "/mcp/public", b"{not json")
    assert res.status_code == 400 and res.json()["error"]["code"] == -32700
    res = post(gw, "/mcp/public", {"jsonrpc": "2.0", "id": None, "method": "ping"})
    assert res.status_code == 400 and res.json()["error"]["code"] == -32600

    # Sessions: required, unknown, and bound to the principal that opened them.
    res = post(gw, "/mcp", ping, auth(key))
    assert res.status_code == 400 and "Mcp-Session-Id" in res.json()["error"]["message"]
    res = post(gw, "/mcp", ping, {**auth(key), "Mcp-Session-Id": uuid.uuid4().hex})
    assert res.status_code == 404 and res.json()["error"]["code"] == -32001
    session = initialize(gw, "/mcp", auth(key))
    mine = {**auth(key), "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
    res = post(gw, "/mcp", ping, mine)
    assert res.status_code == 200 and res.json() == {"jsonrpc": "2.0", "id": 2, "result": {}}
    other = new_key(gw)["secret"]
    res = post(gw, "/mcp", ping, {**auth(other), "Mcp-Session-Id": session})
    assert res.status_code == 404, "another principal cannot use this session"

    # A protocol version the gateway does not speak; a batch where the version forbids them.
    res = post(gw, "/mcp", ping, {**mine, "MCP-Protocol-Version": "1999-01-01"})
    assert res.status_code == 400 and "2025-11-25" in res.json()["error"]["data"]["supported"]
    res = post(gw, "/mcp", [ping, ping], mine)
    assert res.status_code == 400 and res.json()["error"]["code"] == -32600

    # A forged cursor is refused.
    res = post(gw, "/mcp", {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"cursor": "AAAA.BBBB"}}, mine)
    assert res.status_code == 200 and res.json()["error"]["code"] == -32602

    # DELETE ends the session everywhere.
    res = httpx.delete(f"{gw.origin}/mcp", headers=mine, timeout=10)
    assert res.status_code == 200
    assert post(gw, "/mcp", ping, mine).status_code == 404


def test_batches_in_2025_03_26(mcp_gateway: Gateway) -> None:
    gw = mcp_gateway
    session = initialize(gw, "/mcp/public", {}, version="2025-03-26")
    headers = {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-03-26"}
    res = post(
        gw,
        "/mcp/public",
        [
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": "a", "method": "ping"},
            {"jsonrpc": "2.0", "id": "b", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "batched"}}},
        ],
        headers,
    )
    assert res.status_code == 200, res.text
    answers = {a["id"]: a for a in res.json()}
    assert answers["a"]["result"] == {}
    assert answers["b"]["result"]["content"][0]["text"] == "batched"


def test_stdio_spawns_are_audited(mcp_gateway: Gateway, key: str) -> None:
    session = initialize(mcp_gateway, "/mcp/local-only", auth(key))
    assert session

    def spawned() -> list[dict]:
        spawns = [r for r in audit_records(mcp_gateway) if r["action"] == "mcp.spawn" and r["target"] == "local"]
        assert spawns
        return spawns

    spawn = eventually(spawned)[-1]
    detail = json.loads(spawn["detail"]) if isinstance(spawn["detail"], str) else spawn["detail"]
    assert detail["pid"] > 0 and Path(detail["command"]).name.startswith("python")


async def test_quotas_refuse_with_a_retry_time(mcp_gateway: Gateway) -> None:
    fresh = new_key(mcp_gateway)["secret"]
    async with connect(f"{mcp_gateway.origin}/mcp", auth(fresh)) as client:
        assert text_of(await client.call_tool("files_add", {"a": 1, "b": 1})) == "2"
        assert text_of(await client.call_tool("files_add", {"a": 1, "b": 2})) == "3"
        with pytest.raises(MCPError) as err:
            await client.session.call_tool("files_add", {"a": 1, "b": 3})
        assert err.value.error.code == -32013
        data = err.value.error.data
        assert data["quota"] == "add-per-minute" and data["window"] == "minute"
        assert 0 < data["retryAfterSeconds"] <= 62
        # Another key has its own counter.
    async with connect(f"{mcp_gateway.origin}/mcp", auth(new_key(mcp_gateway)["secret"])) as other:
        assert text_of(await other.call_tool("files_add", {"a": 2, "b": 2})) == "4"

    # One slow_count per server at a time: a second call while the first runs is refused.
    async with connect(f"{mcp_gateway.origin}/mcp", auth(fresh)) as client:
        started = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            started.set()

        async def long_call() -> None:
            result = await client.call_tool("files_slow_count", {"n": 20, "delay": 0.1}, progress_callback=on_progress)
            assert text_of(result) == "counted 20"

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_call)
            await started.wait()
            with pytest.raises(MCPError) as err:
                await client.session.call_tool("files_slow_count", {"n": 1})
            assert err.value.error.data["window"] == "concurrent"
        # The first call has ended: its slot is free again.
        assert text_of(await client.call_tool("files_slow_count", {"n": 1})) == "counted 1"

    def refused() -> dict:
        quota = [r for r in audit_records(mcp_gateway) if r["action"] == "mcp.tools/call" and r["decision"] == "quota"]
        assert len(quota) >= 2, quota
        return quota[0]

    record = eventually(refused)
    assert record["outcome"] == "denied" and record["rule"] in {"add-per-minute", "one-count-at-a-time"}


def sse_events(lines) -> Iterator[dict]:
    """Parses SSE lines into {id, data} events (data parsed as JSON when present)."""
    event: dict = {}
    for line in lines:
        if line == "":
            if event:
                yield event
            event = {}
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            event["id"] = value
        elif field == "data" and value.strip():
            event["data"] = json.loads(value)


def test_a_dropped_stream_resumes_with_last_event_id(mcp_gateway: Gateway) -> None:
    gw = mcp_gateway
    session = initialize(gw, "/mcp/public", {}, version="2025-11-25")
    headers = {
        "Accept": ACCEPT,
        "Content-Type": "application/json",
        "Mcp-Session-Id": session,
        "MCP-Protocol-Version": "2025-11-25",
    }
    call = {
        "jsonrpc": "2.0",
        "id": 41,
        "method": "tools/call",
        "params": {"name": "slow_count", "arguments": {"n": 6, "delay": 0.2}, "_meta": {"progressToken": "p"}},
    }
    seen: list[dict] = []
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{gw.origin}/mcp/public", json=call, headers=headers) as res:
            assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
            for event in sse_events(res.iter_lines()):
                seen.append(event)
                if "data" in event:
                    break  # drop the connection after the first progress notification
    assert seen[0]["id"].endswith(".0") and "data" not in seen[0], "a priming event comes first"
    first = seen[-1]
    assert first["data"]["method"] == "notifications/progress"
    assert first["data"]["params"]["progressToken"] == "p"

    resumed: list[dict] = []
    with httpx.Client(timeout=30) as http:
        with http.stream(
            "GET", f"{gw.origin}/mcp/public", headers={**headers, "Last-Event-ID": first["id"]}
        ) as res:
            assert res.status_code == 200
            for event in sse_events(res.iter_lines()):
                resumed.append(event)
                if event.get("data", {}).get("id") == 41:
                    break
    progress = [e["data"]["params"]["progress"] for e in resumed if e["data"].get("method") == "notifications/progress"]
    assert progress == [2, 3, 4, 5, 6], "nothing lost, nothing repeated"
    answer = resumed[-1]["data"]
    assert answer["result"]["content"][0]["text"] == "counted 6"
    # Ids are the gateway's: one stream, increasing sequence numbers.
    stream = first["id"].split(".")[0]
    seqs = [int(e["id"].split(".")[1]) for e in resumed]
    assert all(e["id"].split(".")[0] == stream for e in resumed) and seqs == sorted(seqs)

    # A stream that never existed cannot be resumed; a malformed id is a 400.
    res = httpx.get(f"{gw.origin}/mcp/public", headers={**headers, "Last-Event-ID": "999.1"}, timeout=10)
    assert res.status_code == 404
    res = httpx.get(f"{gw.origin}/mcp/public", headers={**headers, "Last-Event-ID": "nonsense"}, timeout=10)
    assert res.status_code == 400


async def test_an_upstream_that_forgot_the_session_gets_a_new_one(tmp_path: Path) -> None:
    """An upstream that restarts forgets its sessions and answers the old session id with 404.
    The spec has the client start a new session then: the gateway initializes a new upstream
    session and sends the call there, and the client's own session carries on unaware."""
    port = free_port()
    config = CONFIG_HEAD.format(master=MASTER_KEY, db=tmp_path / "tollgate.db") + (
        f"logging:\n  level: warn\nmcp:\n  servers:\n    - name: files\n      url: http://127.0.0.1:{port}/mcp\n"
    )
    with start_upstream("streamable-http", name="files", port=port) as first, launch_gateway(tmp_path, config) as gw:
        key = new_key(gw)["secret"]
        async with connect(f"{gw.origin}/mcp", auth(key)) as client:
            assert text_of(await client.call_tool("echo", {"text": "before"})) == "before"
            first.proc.terminate()
            first.proc.wait(timeout=10)
            with start_upstream("streamable-http", name="files", port=port), anyio.fail_after(30):
                # Concurrent calls meet the ended session together and share one new one.
                async with anyio.create_task_group() as tg:
                    answers: list[str] = []

                    async def call(n: int) -> None:
                        answers.append(text_of(await client.call_tool("echo", {"text": f"after {n}"})))

                    for n in range(4):
                        tg.start_soon(call, n)
                assert sorted(answers) == [f"after {n}" for n in range(4)]
                assert text_of(await client.call_tool("add", {"a": 2, "b": 3})) == "5"
        logs = gw.logs()
        assert logs.count("the MCP upstream ended its session; opening a new one") == 1, logs
