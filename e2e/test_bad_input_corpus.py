"""A corpus of malformed and hostile requests against every front door: `/v1` (OpenAI and
Anthropic APIs), `/mcp` (JSON-RPC over Streamable HTTP), `/a2a` (A2A JSON-RPC and HTTP+JSON) and
`/admin/v1`.

The cases (generated below, one test id each) cover invalid JSON, wrong types, huge numbers,
deep nesting, invalid UTF-8, oversized headers and bodies, duplicate keys, header/body
mismatches, request smuggling (Content-Length with Transfer-Encoding, conflicting lengths,
obs-fold, bare LF, malformed chunking), path traversal in names, and CR, LF and NUL in header
values. What is proved for each:

* the answer is a clean 4xx in the protocol's own error shape (OpenAI's, Anthropic's, a
  JSON-RPC error, A2A's, the admin API's JSON error); JSON-RPC errors may come with HTTP 200.
  Requests hyper refuses before routing carry no body: there any 4xx, or the connection closed
  without an answer, is accepted. Never a 2xx success, a 3xx, a 5xx, or no answer in time;
* a pipelined or smuggled second request is never answered with anything but a refusal;
* nothing malformed reaches the A2A agent (it records what it receives), except requests that
  are well-formed JSON-RPC with bad parameters, which the agent itself refuses;
* the process stays up, never logs a panic, and the next valid request on the same layer is
  served;
* no data changes: after each case, and over the whole corpus, the store holds the same keys,
  teams, users, agents, tool pins, approvals and meta rows (SQLite, read directly); the only
  new rows are audit records of refusals (never a success) and unpriced ledger records of model
  requests that failed; and the admin API lists the same keys, teams, users, agents and spend.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import httpx
import pytest
from conftest import CONFIG_HEAD, MASTER_KEY, MOCK_ECHO, Gateway, launch_gateway
from mcp_client_util import start_upstream
from test_a2a_gateway import Agent, start_agent

LIMIT = 256 * 1024  # limits.max_body_size below
CASE_TIMEOUT = 5.0  # seconds for a whole answer: longer is a hang
PIPELINE_GRACE = 0.25  # how long to wait for an answer to a smuggled or pipelined request

CONFIG = CONFIG_HEAD + """\
logging:
  level: warn
limits:
  max_body_size: 256KiB
  body_read_timeout: 2s
  header_read_timeout: 2s
""" + MOCK_ECHO + """\
mcp:
  servers:
    - name: files
      url: {files}
  virtual_servers:
    - name: files-only
      servers: [files]
a2a:
  agents:
    - name: echo
      url: {agent}
"""

MCP_VERSION = "2025-06-18"
ACCEPT = "application/json, text/event-stream"
PING = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
A2A_RPC = "/a2a/echo/a2a/jsonrpc"
A2A_CARD = "/a2a/echo/.well-known/agent-card.json"
CHAT = "/v1/chat/completions"
USER_MSG = [{"role": "user", "content": "hi"}]


# --- the environment the cases run in ---------------------------------------------------------


@dataclass
class Env:
    gw: Gateway
    db: Path
    agent: Agent
    http: httpx.Client
    key: str  # the corpus's virtual key
    key_id: str
    probe: str  # the key the liveness probes use, so their records can be told apart
    probe_id: str
    victim: str  # id of a key the admin cases try to change
    team: str
    user: str
    session: str  # an MCP session of `key`
    probe_session: str  # an MCP session of `probe`
    stderr_offset: int = 0
    before: dict = field(default_factory=dict)  # the store before the corpus
    listings: dict = field(default_factory=dict)  # the admin API's view before the corpus
    state: dict = field(default_factory=dict)  # the store before the current case
    audit_seq: int = 0  # the last audit record already looked at
    ledger_id: int = 0  # the last ledger record already looked at

    @property
    def hostport(self) -> str:
        return self.gw.origin.removeprefix("http://")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def flush_store(env: Env) -> None:
    """Waits until queued audit and ledger records are written: the conversation view flushes
    both writers before it reads."""
    res = env.gw.admin("GET", f"/admin/v1/conversations/flush-{uuid.uuid4().hex}")
    assert res.status_code == 200, res.text


def mcp_headers(secret: str, session: Optional[str] = None) -> dict[str, str]:
    h = {**bearer(secret), "Accept": ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": MCP_VERSION}
    if session:
        h["Mcp-Session-Id"] = session
    return h


def mcp_initialize(gw: Gateway, secret: str) -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": MCP_VERSION, "capabilities": {}, "clientInfo": {"name": "corpus", "version": "0"}},
    }
    res = httpx.post(f"{gw.origin}/mcp", json=body, headers=mcp_headers(secret), timeout=30)
    assert res.status_code == 200, res.text
    return res.headers["mcp-session-id"]


def a2a_send(text: str) -> dict:
    message = {"kind": "message", "messageId": str(uuid.uuid4()), "role": "user", "parts": [{"kind": "text", "text": text}]}
    return {"jsonrpc": "2.0", "id": "probe", "method": "message/send", "params": {"message": message}}


# --- liveness: each layer still serves a valid request ------------------------------------------


def probe(env: Env, layer: str) -> Optional[str]:
    """One valid request on `layer`; None if it was served as it should be."""
    try:
        if layer == "v1":
            body = {"model": "mock-echo", "messages": [{"role": "user", "content": "still serving"}]}
            res = env.http.post(f"{env.gw.origin}{CHAT}", json=body, headers=bearer(env.probe))
            ok = res.status_code == 200 and res.json()["choices"][0]["message"]["content"] == "still serving"
        elif layer == "mcp":
            res = env.http.post(f"{env.gw.origin}/mcp", json=PING, headers=mcp_headers(env.probe, env.probe_session))
            ok = res.status_code == 200 and res.json().get("result") == {}
        elif layer == "a2a":
            res = env.http.post(
                f"{env.gw.origin}{A2A_RPC}", json=a2a_send("hello"), headers={**bearer(env.probe), "A2A-Version": "0.3"}
            )
            ok = res.status_code == 200 and "result" in res.json()
        else:
            res = env.http.get(f"{env.gw.origin}/admin/v1/keys", headers=bearer(env.gw.master_key))
            ok = res.status_code == 200 and isinstance(res.json().get("data"), list)
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        return f"the next valid {layer} request failed: {e!r}"
    return None if ok else f"the next valid {layer} request got {res.status_code} {res.text[:300]}"


def health(env: Env, layer: str) -> list[str]:
    problems = []
    if env.gw.proc is not None and env.gw.proc.poll() is not None:
        return [f"the gateway exited with status {env.gw.proc.poll()}"]
    err = env.gw.stderr_path.read_bytes()
    fresh, env.stderr_offset = err[env.stderr_offset :], len(err)
    if b"panicked" in fresh:
        problems.append("panic in stderr: " + fresh.decode(errors="replace")[-2000:])
    if (p := probe(env, layer)) is not None:
        problems.append(p)
    return problems


# --- the store, before and after ----------------------------------------------------------------


ROW_ID = {"audit_log": "seq", "ledger": "id"}


def snapshot(db: Path, since: Optional[dict[str, int]] = None) -> dict[str, list[dict]]:
    """Every row of every table, read through a read-only connection. With `since` (the last
    audit and ledger record already seen), only newer ones of those, and not the hourly rollup:
    the quick look taken after each case."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        out = {}
        for t in tables:
            if since is not None and t == "ledger_hourly":
                continue
            where = f"WHERE {ROW_ID[t]} > {int(since[t])}" if since is not None and t in ROW_ID else ""
            out[t] = [dict(r) for r in conn.execute(f'SELECT * FROM "{t}" {where} ORDER BY 1')]
        return out
    finally:
        conn.close()


def last_ids(snap: dict[str, list[dict]], floor: dict[str, int]) -> dict[str, int]:
    return {t: max((r[col] for r in snap[t]), default=floor.get(t, 0)) for t, col in ROW_ID.items()}


# Tables that grow with refusals (their new rows are checked on their own), and SQLite's
# AUTOINCREMENT bookkeeping.
GROWING = ("audit_log", "ledger", "ledger_hourly", "sqlite_sequence")


def protected(snap: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """What no refused request may change: every other table, and every meta row but the audit
    chain's head (which moves with each audit record)."""
    out = {t: rows for t, rows in snap.items() if t not in GROWING}
    out["tollgate_meta"] = [r for r in out.get("tollgate_meta", []) if r["k"] != "audit_head"]
    return out


def short(v: object, n: int = 300) -> str:
    text = repr(v)
    return text if len(text) <= n else text[:n] + "..."


def store_diff(old: dict[str, list[dict]], new: dict[str, list[dict]]) -> list[str]:
    problems = []
    for table in sorted(set(old) | set(new)):
        a, b = old.get(table, []), new.get(table, [])
        if a != b:
            added, removed = [r for r in b if r not in a], [r for r in a if r not in b]
            problems.append(f"{table}: added {short(added)}, removed {short(removed)}")
    return problems


def accepted_in_audit(env: Env, snap: dict[str, list[dict]], since: int) -> list[str]:
    """Audit records after `since`, the probes' aside, that record a success: a refused request
    may leave a record of its refusal (a failed key change, a denied or failed call), not more."""
    return [
        f"{r['action']} {r['target']!r}"
        for r in snap["audit_log"]
        if r["seq"] > since and r["principal"] != env.probe_id and r["outcome"] == "success"
    ]


def served_in_ledger(env: Env, snap: dict[str, list[dict]], since: int) -> list[str]:
    """Ledger records after `since`, the probes' aside, of requests that were served or priced:
    a model request refused by the upstream is recorded, failed and free; nothing else may be."""
    return [
        short(r["record"], 200)
        for r in snap["ledger"]
        if r["id"] > since and r["key_id"] != env.probe_id and (not r["failed"] or r["cost_usd"] != 0)
    ]


def store_effects(env: Env) -> list[str]:
    """What the last case changed in the store (compared with the state before it)."""
    flush_store(env)
    seen = {"audit_log": env.audit_seq, "ledger": env.ledger_id}
    snap = snapshot(env.db, since=seen)
    problems = [f"the store changed: {d}" for d in store_diff(protected(env.state), protected(snap))]
    if accepted := accepted_in_audit(env, snap, env.audit_seq):
        problems.append(f"the audit chain records a success: {accepted}")
    if served := served_in_ledger(env, snap, env.ledger_id):
        problems.append(f"the ledger records a served request: {served}")
    env.state = snap
    latest = last_ids(snap, seen)
    env.audit_seq, env.ledger_id = latest["audit_log"], latest["ledger"]
    return problems


def listings(env: Env) -> dict[str, object]:
    """What the admin API shows of the directory, the registry and spend: cost per key, the
    probes' aside (a refused model request is in the ledger, with no cost)."""

    def get(path: str) -> dict:
        res = env.gw.admin("GET", path)
        assert res.status_code == 200, f"{path}: {res.status_code} {res.text}"
        return res.json()

    spend = get("/admin/v1/spend?group_by=key&since=1d")
    return {
        "keys": get("/admin/v1/keys?limit=1000")["data"],
        "teams": get("/admin/v1/teams"),
        "users": get("/admin/v1/users"),
        "agents": get("/admin/v1/a2a/agents"),
        "spend": {r["group"]: r["cost_usd"] for r in spend["rows"] if r["group"] != env.probe_id and r["cost_usd"]},
    }


# --- requests and their answers -----------------------------------------------------------------


@dataclass(frozen=True)
class Http:
    """A well-formed HTTP request (sent with httpx, or on a socket when its path has dot
    segments, which httpx would resolve)."""

    method: str
    path: str
    headers: dict
    body: Optional[bytes] = None


@dataclass(frozen=True)
class Raw:
    """Bytes written on a fresh connection; `half_close` then shuts the sending side."""

    data: bytes
    half_close: bool = False


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def summary(self) -> str:
        return f"{self.status} {self.headers.get('content-type', '')} {self.body[:300]!r}"


@dataclass
class Outcome:
    replies: list[Reply]
    hung: bool = False
    note: str = ""  # how the connection ended, for failure messages
    unannounced_close: bool = False  # closed after a reply that did not say `Connection: close`
    garbled: bool = False  # bytes that are not an HTTP response
    unreachable: bool = False  # no connection at all

    def summary(self) -> str:
        parts = [r.summary() for r in self.replies] or ["no response"]
        if self.hung:
            parts.append(f"no complete answer within {CASE_TIMEOUT}s")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


class Hang(Exception):
    pass


class Conn:
    """A buffered reader over a socket with one deadline for the whole exchange."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline, self.buf, self.eof = sock, deadline, b"", False

    def fill(self, deadline: Optional[float] = None) -> bool:
        if self.eof:
            return False
        remaining = (deadline or self.deadline) - time.monotonic()
        if remaining <= 0:
            raise Hang
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Hang from None
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def until(self, sep: bytes) -> Optional[bytes]:
        while sep not in self.buf:
            if not self.fill():
                return None
        head, self.buf = self.buf.split(sep, 1)
        return head

    def exactly(self, n: int) -> Optional[bytes]:
        while len(self.buf) < n:
            if not self.fill():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self) -> bytes:
        while self.fill():
            pass
        out, self.buf = self.buf, b""
        return out


def read_reply(conn: Conn) -> Optional[Reply]:
    """One response (interim 1xx ones skipped); None when the connection ends first."""
    while True:
        head = conn.until(b"\r\n\r\n")
        if head is None:
            if conn.buf.strip():
                raise ValueError(f"not an HTTP response: {conn.buf[:200]!r}")
            return None
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP status line: {lines[0][:200]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.decode("latin-1").strip().lower()
            headers[key] = (headers[key] + ", " if key in headers else "") + value.decode("latin-1").strip()
        if 100 <= status < 200:
            continue
        if status in (204, 304):
            return Reply(status, headers, b"")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            if headers.get("content-type", "").startswith("text/event-stream"):
                return Reply(status, headers, b"<event stream>")
            body = b""
            while True:
                size_line = conn.until(b"\r\n")
                if size_line is None:
                    break
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    conn.until(b"\r\n")  # the empty trailer section
                    break
                body += conn.exactly(size) or b""
                conn.until(b"\r\n")
            return Reply(status, headers, body)
        if "content-length" in headers:
            return Reply(status, headers, conn.exactly(int(headers["content-length"])) or b"")
        return Reply(status, headers, conn.rest())


def exchange(hostport: str, data: bytes, half_close: bool, pipelined: bool, check_close: bool = False) -> Outcome:
    address, port = hostport.rsplit(":", 1)
    deadline = time.monotonic() + CASE_TIMEOUT
    out = Outcome([])
    try:
        sock = socket.create_connection((address, int(port)), timeout=CASE_TIMEOUT)
    except OSError as e:
        return Outcome([], note=f"cannot connect: {e}", unreachable=True)
    with sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError) as e:
            out.note = f"the server stopped reading the request ({e.__class__.__name__})"
        conn = Conn(sock, deadline)
        try:
            reply = read_reply(conn)
            while reply is not None:
                out.replies.append(reply)
                closing = "close" in reply.headers.get("connection", "").lower()
                if not pipelined and not closing:
                    break
                # Anything after the first answer is an answer to bytes the server took for
                # another request: wait a moment for it (or for the close).
                if not conn.buf and not conn.fill(min(deadline, time.monotonic() + PIPELINE_GRACE)):
                    break
                reply = read_reply(conn)
            # A server that closes a kept-alive connection after answering must say so, or the
            # client's next request on it fails.
            last = out.replies[-1] if out.replies else None
            if check_close and last and "close" not in last.headers.get("connection", "").lower():
                out.unannounced_close = not conn.buf and not conn.fill(time.monotonic() + PIPELINE_GRACE)
        except Hang:
            if not out.replies:
                out.hung = True
        except ValueError as e:
            out.garbled, out.note = True, str(e)
    return out


def to_raw(req: Http, hostport: str) -> bytes:
    body = req.body if isinstance(req.body, bytes) else b""
    lines = [f"{req.method} {req.path} HTTP/1.1", f"Host: {hostport}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in req.headers.items()]
    if body or req.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def describe(req: Union[Http, Raw]) -> str:
    if isinstance(req, Raw):
        return short(req.data, 400) + (" (then half-closed)" if req.half_close else "")
    headers = ", ".join(f"{k}: {v[:60]}" for k, v in req.headers.items() if k != "Authorization")
    return f"{req.method} {req.path} [{headers}] body={short(req.body, 200)}"


def needs_socket(path: str) -> bool:
    segments = path.split("?")[0].split("/")
    return any(s in (".", "..") for s in segments)


def send(env: Env, req: Union[Http, Raw], pipelined: bool, check_close: bool) -> Outcome:
    if isinstance(req, Raw):
        return exchange(env.hostport, req.data, req.half_close, pipelined, check_close)
    if needs_socket(req.path):
        return exchange(env.hostport, to_raw(req, env.hostport), False, False)
    request = env.http.build_request(req.method, f"{env.gw.origin}{req.path}", headers=req.headers, content=req.body)
    try:
        res = env.http.send(request, stream=True)
    except httpx.TimeoutException:
        return Outcome([], hung=True)
    except httpx.TransportError as e:
        return Outcome([], note=f"connection ended without a response ({e!r})")
    try:
        if res.headers.get("content-type", "").startswith("text/event-stream"):
            body = b"<event stream>"
        else:
            body = res.read()
        headers = {k.lower(): v for k, v in res.headers.items()}
    except httpx.TimeoutException:
        return Outcome([Reply(res.status_code, {}, b"")], hung=True)
    finally:
        res.close()
    return Outcome([Reply(res.status_code, headers, body)])


# --- judging an answer --------------------------------------------------------------------------


def _json(reply: Reply) -> Optional[object]:
    try:
        return json.loads(reply.body)
    except ValueError:
        return None


def is_openai_error(v: object) -> bool:
    e = v.get("error") if isinstance(v, dict) else None
    return isinstance(e, dict) and isinstance(e.get("message"), str) and isinstance(e.get("type"), str)


def is_anthropic_error(v: object) -> bool:
    e = v.get("error") if isinstance(v, dict) else None
    return (
        isinstance(v, dict)
        and v.get("type") == "error"
        and isinstance(e, dict)
        and isinstance(e.get("type"), str)
        and isinstance(e.get("message"), str)
    )


def is_jsonrpc_error(v: object) -> bool:
    e = v.get("error") if isinstance(v, dict) else None
    return (
        isinstance(v, dict)
        and v.get("jsonrpc") == "2.0"
        and "id" in v
        and "result" not in v
        and isinstance(e, dict)
        and isinstance(e.get("code"), int)
        and isinstance(e.get("message"), str)
    )


def is_a2a_rest_error(v: object) -> bool:
    """A2A's HTTP+JSON binding: a google.rpc.Status body."""
    e = v.get("error") if isinstance(v, dict) else None
    return isinstance(e, dict) and isinstance(e.get("code"), int) and isinstance(e.get("message"), str)


SHAPES: dict[str, Callable[[object], bool]] = {
    "openai": is_openai_error,
    "admin": is_openai_error,
    "anthropic": is_anthropic_error,
    "jsonrpc": is_jsonrpc_error,
    "a2a": lambda v: is_jsonrpc_error(v) or is_a2a_rest_error(v),
    # A path whose dot segments lead out of the layer (`/mcp/../x`) is the gateway's, not the
    # layer's: its generic (OpenAI-shaped) not-found answer is as right as the layer's.
    "mcp-or-generic": lambda v: is_jsonrpc_error(v) or is_openai_error(v),
    "a2a-or-generic": lambda v: is_jsonrpc_error(v) or is_a2a_rest_error(v) or is_openai_error(v),
    # The push relay's callback answers agents' webhook calls, a protocol without an error body.
    "push": lambda v: isinstance(v, dict) and isinstance(v.get("error"), (str, dict)),
}
JSONRPC_SHAPES = {"jsonrpc", "a2a", "mcp-or-generic", "a2a-or-generic"}


@dataclass(frozen=True)
class Case:
    name: str
    layer: str  # v1 | mcp | a2a | admin: which layer's liveness is checked after it
    shape: str  # a key of SHAPES
    build: Callable[[Env], Union[Http, Raw]]
    status: frozenset = frozenset()  # if set, the first answer's status must be one of these
    wire: bool = False  # refused by hyper before routing: an empty-bodied 4xx or a close is fine
    pipelined: bool = False  # more than one request on the connection: read every answer
    reaches_agent: bool = False  # a well-formed call the A2A agent may refuse itself
    check_close: bool = False  # on a kept-alive connection: a close after the answer is announced

    @property
    def id(self) -> str:
        return f"{self.layer}-{self.name}"


def judge_reply(case: Case, reply: Reply, first: bool) -> list[str]:
    body = _json(reply)
    if reply.status >= 500:
        return [f"server error {reply.status}"]
    # JSON-RPC over HTTP may carry an error about the call itself with 200.
    rpc_error_200 = reply.status == 200 and case.shape in JSONRPC_SHAPES and is_jsonrpc_error(body)
    if reply.status < 400 and not rpc_error_200:
        return [f"a {reply.status} {'success' if reply.status < 300 else 'answer'} instead of a refusal"]
    if first and case.status and reply.status not in case.status:
        return [f"expected status {sorted(case.status)}, got {reply.status}"]
    if case.wire and not reply.body:
        return []  # hyper's own refusal: no body, no protocol
    content_type = reply.headers.get("content-type", "")
    if body is None or not content_type.startswith("application/json"):
        return [f"{reply.status} without a JSON error body (content-type {content_type!r})"]
    if not SHAPES[case.shape](body):
        return [f"{reply.status} body is not a {case.shape} error"]
    return []


def judge(case: Case, out: Outcome) -> list[str]:
    if out.hung:
        return ["hang: " + out.summary()]
    if out.garbled or out.unreachable:
        return ["no HTTP answer: " + out.summary()]
    if not out.replies:
        return [] if case.wire else ["no response: " + out.summary()]
    problems = []
    if out.unannounced_close:
        problems.append("the connection was closed after the answer, which did not say `Connection: close`")
    if not case.pipelined and len(out.replies) > 1:
        problems.append(f"{len(out.replies)} answers on one request")
    for i, r in enumerate(out.replies):
        problems += judge_reply(case, r, first=i == 0)
    return problems


# --- building cases -----------------------------------------------------------------------------


def j(obj: object) -> bytes:
    return json.dumps(obj).encode()


def nested(levels: int) -> bytes:
    """`levels` nested arrays around a number."""
    return b"[" * levels + b"1" + b"]" * levels


def deep(prefix: bytes, depth: int) -> bytes:
    """`prefix` (the opening of a JSON object, up to where a value goes) completed with nested
    arrays, so that the whole body nests `depth` levels deep."""
    open_objects = prefix.count(b"{") - prefix.count(b"}")
    return prefix + nested(depth - open_objects) + b"}" * open_objects


# Openings of bodies with room for a deep value, one per API.
CHAT_DEEP = b'{"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}], "x_deep": '
MESSAGES_DEEP = b'{"model": "mock-echo", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "x": '
MCP_DEEP = b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": '
A2A_DEEP = b'{"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"id": "x", "deep": '
KEY_DEEP = b'{"name": "deep", "metadata": {"a": '


def body_bytes(body: object) -> Optional[bytes]:
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return j(body)


def merged(base: dict, extra: Optional[dict]) -> dict:
    """`base` with `extra`'s headers added or replaced (None: removed)."""
    out = {**base, **(extra or {})}
    return {k: v for k, v in out.items() if v is not None}


def v1(name, body, *, path=CHAT, method="POST", headers=None, status=(), anthropic=False) -> Case:
    def build(env: Env) -> Http:
        base = {**bearer(env.key), "Content-Type": "application/json"}
        return Http(method, path, merged(base, headers), body_bytes(body))

    return Case(name, "v1", "anthropic" if anthropic else "openai", build, frozenset(status))


def messages(name, body, **kw) -> Case:
    return v1(f"messages-{name}", body, path="/v1/messages", anthropic=True, **kw)


def chat(**fields) -> dict:
    """A chat completion request with `fields` added or replaced."""
    return {"model": "mock-echo", "messages": USER_MSG, **fields}


def mcp(
    name, body=PING, *, path="/mcp", method="POST", headers=None, session=True, status=(), shape="jsonrpc", session_of=None
) -> Case:
    def build(env: Env) -> Http:
        sid = session_of(env) if session_of else env.session if session else None
        return Http(method, path, merged(mcp_headers(env.key, sid), headers), body_bytes(body) if method == "POST" else None)

    return Case(name, "mcp", shape, build, frozenset(status))


def a2a(
    name, body, *, path=A2A_RPC, method="POST", headers=None, status=(), reaches_agent=False, shape="a2a", auth=True
) -> Case:
    def build(env: Env) -> Http:
        base = {"Content-Type": "application/json", "A2A-Version": "0.3", **(bearer(env.key) if auth else {})}
        return Http(method, path, merged(base, headers), body_bytes(body))

    return Case(name, "a2a", shape, build, frozenset(status), reaches_agent=reaches_agent)


def admin(name, method, path, body=None, *, headers=None, status=(), auth=None) -> Case:
    """`path` may name the corpus's `{victim}` key, `{team}` and `{user}`."""

    def build(env: Env) -> Http:
        base = {**bearer(auth(env) if auth else env.gw.master_key), "Content-Type": "application/json"}
        path_ = path.format(victim=env.victim, team=env.team, user=env.user)
        return Http(method, path_, merged(base, headers), body_bytes(body))

    return Case(name, "admin", "admin", build, frozenset(status))


def rpc(method: str, params: object = None) -> dict:
    m = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        m["params"] = params
    return m


def syntax(key: str, value: str) -> dict[str, bytes]:
    """JSON that is not JSON. Each flaw comes in the body's first member (`key`: `value`), so
    the parser meets it before anything a well-formed body could be refused for."""
    member = f'"{key}": "{value}"'
    return {
        "empty-body": b"",
        "whitespace-body": b" \r\n\t ",
        "truncated": f'{{"{key}": "{value[:1]}'.encode(),
        "trailing-garbage": f"{{{member}}} x".encode(),
        "trailing-comma": f"{{{member},}}".encode(),
        "single-quotes": f"{{{member}}}".replace('"', "'").encode(),
        "comment": f"{{{member} /* hi */}}".encode(),
        "nan-literal": f'{{"{key}": NaN}}'.encode(),
        "infinity-literal": f'{{"{key}": -Infinity}}'.encode(),
        "utf8-bom": f"\ufeff{{{member}}}".encode(),
        "utf16-body": f"{{{member}}}".encode("utf-16"),
        "nul-bytes": b"\x00" * 32,
    }


# Strings that are not UTF-8 (or not Unicode), placed where a string belongs.
BAD_TEXT = {
    "invalid-utf8": b'"\xff\xfe"',
    "overlong-utf8": b'"\xc0\xaf"',
    "utf8-surrogate": b'"\xed\xa0\x80"',
    "lone-surrogate-escape": b'"\\ud800"',
}


def v1_cases() -> list[Case]:
    cases = [v1(f"syntax-{k}", b) for k, b in syntax("model", "mock-echo").items()]
    for k, s in BAD_TEXT.items():
        cases.append(v1(f"content-{k}", b'{"model": "mock-echo", "messages": [{"role": "user", "content": ' + s + b"}]}"))
    for k, v in {"null": None, "number": 5, "array": ["mock-echo"], "object": {}, "bool": True, "empty": ""}.items():
        cases.append(v1(f"model-{k}", chat(model=v)))
    wrong_types = {
        "messages-string": chat(messages="hi"),
        "messages-object": chat(messages={"role": "user"}),
        "messages-empty": chat(messages=[]),
        "messages-number-items": chat(messages=[5, 6]),
        "messages-role-number": chat(messages=[{"role": 5, "content": "hi"}]),
        "stream-string": chat(stream="true"),
        "stream-number": chat(stream=1),
        "stream-options-string": chat(stream_options="usage"),
        "max-tokens-string": chat(max_tokens="10"),
        "max-tokens-fraction": chat(max_tokens=1.5),
        "max-tokens-negative": chat(max_tokens=-1),
        "max-completion-tokens-array": chat(max_completion_tokens=[1]),
        "max-tokens-1e400": b'{"model": "mock-echo", "messages": [], "max_tokens": 1e400}',
        "max-tokens-2-pow-64": b'{"model": "mock-echo", "messages": [], "max_tokens": 18446744073709551616}',
        "stream-1e400": b'{"model": "mock-echo", "messages": [], "stream": 1e400}',
        "top-level-array": [chat()],
        "top-level-string": '"mock-echo"',
        "top-level-null": "null",
        "model-missing": {"messages": USER_MSG},
        "model-300-bytes": chat(model="m" * 300),
        "duplicate-model": b'{"model": "mock-echo", "model": "other", "messages": [{"role": "user", "content": "hi"}]}',
        "duplicate-messages": b'{"model": "mock-echo", "messages": [], "messages": [{"role": "user", "content": "hi"}]}',
        "duplicate-stream": b'{"model": "mock-echo", "stream": false, "stream": true, "messages": []}',
        "duplicate-nested-role": b'{"model": "mock-echo", "messages": [{"role": "user", "role": "system", "content": "hi"}]}',
        "1025-top-level-keys": b"{" + b", ".join(b'"k%d": 1' % i for i in range(1025)) + b', "model": "mock-echo"}',
    }
    cases += [v1(name, body) for name, body in wrong_types.items()]
    form, multipart = "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"
    multipart_body = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nmock-echo\r\n--b--\r\n'
    cases += [
        v1("model-path-traversal", chat(model="../../etc/passwd"), status=[404]),
        v1("model-with-nul", chat(model="mock-echo\u0000"), status=[404]),
        v1("form-encoded-body", b"model=mock-echo&messages=hi", headers={"Content-Type": form}),
        v1("multipart-body", multipart_body, headers={"Content-Type": multipart}),
        v1("no-credential", chat(), headers={"Authorization": None}, status=[401]),
        v1("junk-credential", chat(), headers={"Authorization": "Bearer tg-nope"}, status=[401]),
        v1("10k-credential", chat(), headers={"Authorization": "Bearer " + "a" * 10_000}, status=[401]),
        v1("bearer-without-token", chat(), headers={"Authorization": "Bearer"}, status=[401]),
        v1("basic-credential", chat(), headers={"Authorization": "Basic dXNlcjpwYXNz"}, status=[401]),
        v1("put-on-chat", chat(), method="PUT", status=[405]),
        v1("get-on-chat", None, method="GET", status=[405]),
        v1("unknown-v1-path", None, path="/v1/chat/completions/extra"),
        v1("models-encoded-traversal", None, path="/v1/models/..%2f..%2fadmin%2fv1%2fkeys", method="GET", status=[404]),
        v1("models-dot-segments", None, path="/v1/models/../../admin/v1/keys", method="GET", status=[404]),
        v1("models-invalid-utf8", None, path="/v1/models/%ff", method="GET", status=[400]),
        v1("models-crlf", None, path="/v1/models/x%0d%0aSet-Cookie:%20pwn=1", method="GET", status=[404]),
        v1("dot-segment-out-of-v1", None, path="/v1/../admin/v1/keys", method="GET", status=[404]),
        # Nesting: the depth limit (64) is the gateway's, whatever the upstream would accept.
        v1("depth-65", deep(CHAT_DEEP, 65), status=[400]),
        v1("depth-100", deep(CHAT_DEEP, 100), status=[400]),
        v1("depth-129", deep(CHAT_DEEP, 129), status=[400]),
        v1("depth-50000", deep(b'{"model": "mock-echo", "x_deep": ', 50_000), status=[400]),
    ]
    embeddings = {
        "input-number": {"input": 5},
        "input-empty": {"input": []},
        "input-mixed": {"input": ["a", 1, {}]},
        "dimensions-negative": {"input": "a", "dimensions": -1},
        "dimensions-huge": {"input": "a", "dimensions": 10**12},
        "format-traversal": {"input": "a", "encoding_format": "../../x"},
    }
    cases += [v1(f"embeddings-{n}", {"model": "mock-echo", **b}, path="/v1/embeddings") for n, b in embeddings.items()]
    cases += [
        v1("embeddings-dimensions-1e400", b'{"model": "mock-echo", "input": "a", "dimensions": 1e400}', path="/v1/embeddings"),
        v1("responses-input-number", {"model": "mock-echo", "input": 5}, path="/v1/responses"),
        v1("responses-input-object", {"model": "mock-echo", "input": {"a": 1}}, path="/v1/responses"),
        v1("responses-max-output-string", {"model": "mock-echo", "input": "a", "max_output_tokens": "9"}, path="/v1/responses"),
        v1("responses-depth-100", deep(b'{"model": "mock-echo", "input": "a", "x": ', 100), path="/v1/responses", status=[400]),
    ]
    # Anthropic's API answers in its own shape.
    wanted = ("empty-body", "truncated", "trailing-garbage", "nan-literal", "utf8-bom")
    cases += [messages(f"syntax-{k}", b) for k, b in syntax("model", "mock-echo").items() if k in wanted]
    anthropic, count_tokens = {"model": "mock-echo", "max_tokens": 8, "messages": USER_MSG}, "/v1/messages/count_tokens"
    cases += [
        messages("content-invalid-utf8", b'{"model": "mock-echo", "max_tokens": 8, "messages": [{"content": "\xff"}]}'),
        messages("model-number", {**anthropic, "model": 5}),
        messages("messages-string", {**anthropic, "messages": "hi"}),
        messages("messages-empty", {**anthropic, "messages": []}),
        messages("max-tokens-string", {**anthropic, "max_tokens": "8"}),
        messages("max-tokens-1e400", b'{"model": "mock-echo", "max_tokens": 1e400, "messages": []}'),
        messages("duplicate-model", b'{"model": "mock-echo", "model": "x", "max_tokens": 8, "messages": []}'),
        messages("depth-65", deep(MESSAGES_DEEP, 65), status=[400]),
        messages("depth-100", deep(MESSAGES_DEEP, 100), status=[400]),
        messages("depth-50000", deep(b'{"model": "mock-echo", "x": ', 50_000), status=[400]),
        messages("no-credential", anthropic, headers={"Authorization": None}, status=[401]),
        v1("count-tokens-truncated", b'{"model": "mock-echo", "messages": [', path=count_tokens, anthropic=True),
        v1("count-tokens-messages-number", {**anthropic, "messages": 5}, path=count_tokens, anthropic=True),
        v1("count-tokens-depth-100", deep(MESSAGES_DEEP, 100), path=count_tokens, anthropic=True, status=[400]),
    ]
    return cases


def mcp_cases() -> list[Case]:
    cases = [mcp(f"syntax-{k}", b) for k, b in syntax("jsonrpc", "2.0").items()]
    for k, s in BAD_TEXT.items():
        cases.append(mcp(f"method-{k}", b'{"jsonrpc": "2.0", "id": 1, "method": ' + s + b"}"))
    # Not JSON-RPC, or JSON-RPC with parameters of the wrong shape.
    malformed = {
        "batch-empty": [],
        "batch-in-2025-06-18": [PING],
        "top-level-string": '"ping"',
        "top-level-number": "42",
        "top-level-null": "null",
        "jsonrpc-1.0": {**PING, "jsonrpc": "1.0"},
        "jsonrpc-missing": {"id": 1, "method": "ping"},
        "jsonrpc-number": {**PING, "jsonrpc": 2.0},
        "id-object": {**PING, "id": {"a": 1}},
        "id-bool": {**PING, "id": True},
        "id-fraction": {**PING, "id": 1.5},
        "id-1e400": b'{"jsonrpc": "2.0", "id": 1e400, "method": "ping"}',
        "id-2-pow-64": b'{"jsonrpc": "2.0", "id": 18446744073709551616, "method": "ping"}',
        "method-number": {"jsonrpc": "2.0", "id": 1, "method": 5},
        "method-null": {"jsonrpc": "2.0", "id": 1, "method": None},
        "method-empty": rpc(""),
        "method-traversal": rpc("../../admin/v1/keys"),
        "method-10k": rpc("x" * 10_000),
        "result-and-error": {"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "x"}},
        "neither-method-nor-result": {"jsonrpc": "2.0", "id": 1},
        "duplicate-id": b'{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "ping"}',
        "duplicate-method": b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "method": "tools/list"}',
        "duplicate-jsonrpc": b'{"jsonrpc": "1.0", "jsonrpc": "2.0", "id": 1, "method": "ping"}',
        "list-params-string": rpc("tools/list", "x"),
        "list-cursor-number": rpc("tools/list", {"cursor": 5}),
        "list-cursor-forged": rpc("tools/list", {"cursor": "../../x"}),
        "list-cursor-1e400": b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": 1e400}}',
        "call-params-string": rpc("tools/call", "echo"),
        "call-name-number": rpc("tools/call", {"name": 5}),
        "call-name-missing": rpc("tools/call", {"arguments": {}}),
        "call-name-traversal": rpc("tools/call", {"name": "../../etc/passwd", "arguments": {}}),
        "call-arguments-array": rpc("tools/call", {"name": "echo", "arguments": [1, 2]}),
        "call-arguments-string": rpc("tools/call", {"name": "echo", "arguments": "text"}),
        "read-uri-number": rpc("resources/read", {"uri": 5}),
        "prompt-name-null": rpc("prompts/get", {"name": None}),
        "complete-ref-string": rpc("completion/complete", {"ref": "bad", "argument": {}}),
    }
    cases += [mcp(name, body) for name, body in malformed.items()]
    # `initialize` opens a session (and upstream sessions): a malformed one must not.
    hello = {"protocolVersion": MCP_VERSION, "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}
    init_deep = b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", '
    init_deep += b'"clientInfo": {"name": "x", "version": "0"}, "capabilities": '
    cases += [
        mcp("initialize-params-string", rpc("initialize", "junk"), session=False),
        mcp("initialize-params-missing", rpc("initialize"), session=False),
        mcp("initialize-version-number", rpc("initialize", {**hello, "protocolVersion": 5}), session=False),
        mcp("initialize-capabilities-array", rpc("initialize", {**hello, "capabilities": []}), session=False),
        mcp("initialize-client-info-string", rpc("initialize", {**hello, "clientInfo": "x"}), session=False),
        mcp("initialize-depth-100", deep(init_deep, 100), session=False, status=[400]),
        mcp("depth-65", deep(MCP_DEEP, 65), status=[400]),
        mcp("depth-100", deep(MCP_DEEP, 100), status=[400]),
        mcp("depth-200", deep(MCP_DEEP, 200), status=[400]),
        mcp("depth-50000", nested(50_000), status=[400]),
    ]
    # The transport's own checks, and paths.
    sse = {"Accept": "text/event-stream"}
    cases += [
        mcp("content-type-text", headers={"Content-Type": "text/plain"}, status=[415]),
        mcp("content-type-missing", headers={"Content-Type": None}, status=[415]),
        mcp("content-type-jsonp", headers={"Content-Type": "application/jsonp"}, status=[415]),
        mcp("accept-html", headers={"Accept": "text/html"}, status=[406]),
        mcp("accept-json-only", headers={"Accept": "application/json"}, status=[406]),
        mcp("protocol-version-unknown", headers={"MCP-Protocol-Version": "1999-01-01"}, status=[400]),
        mcp("protocol-version-traversal", headers={"MCP-Protocol-Version": "../../x"}, status=[400]),
        mcp("session-garbage", headers={"Mcp-Session-Id": "garbage"}, status=[404]),
        mcp("session-8k", headers={"Mcp-Session-Id": "s" * 8192}, status=[400, 404]),
        mcp("session-of-another-key", session_of=lambda env: env.probe_session, status=[404]),
        mcp("no-session", rpc("tools/list"), session=False, status=[400]),
        mcp("origin-evil", headers={"Origin": "http://evil.example"}, status=[403]),
        mcp("origin-null", headers={"Origin": "null"}, status=[403]),
        mcp("no-credential", headers={"Authorization": None}, status=[401]),
        mcp("junk-credential", headers={"Authorization": "Bearer junk"}, status=[401]),
        mcp("get-last-event-id-junk", None, method="GET", headers={**sse, "Last-Event-ID": "../../etc"}, status=[400]),
        mcp("get-accept-html", None, method="GET", headers={"Accept": "text/html"}, status=[406]),
        mcp("delete-garbage-session", None, method="DELETE", headers={"Mcp-Session-Id": "garbage"}, status=[404]),
        mcp("put", method="PUT", status=[405]),
        mcp("patch-virtual-server", path="/mcp/files-only", method="PATCH", status=[405]),
        mcp("encoded-traversal", path="/mcp/..%2fx", status=[404]),
        mcp("encoded-dot-dot", path="/mcp/%2e%2e", status=[404]),
        mcp("virtual-server-traversal", path="/mcp/files-only%2f..%2f..%2fadmin", status=[404]),
        mcp("virtual-server-invalid-utf8", path="/mcp/%ff", status=[400, 404]),
        mcp("virtual-server-crlf", path="/mcp/x%0d%0aSet-Cookie:%20pwn=1", status=[404]),
        mcp("virtual-server-nul", path="/mcp/x%00y", status=[404]),
        mcp("dot-segments-out-of-mcp", None, path="/mcp/../admin/v1/keys", method="GET", status=[404], shape="mcp-or-generic"),
        mcp("dot-virtual-server", path="/mcp/.", status=[404], shape="mcp-or-generic"),
    ]
    return cases


def a2a_cases() -> list[Case]:
    get_task = rpc("tasks/get", {"id": "no-such-task"})
    wanted = ("empty-body", "truncated", "trailing-garbage", "nan-literal", "utf8-bom", "utf16-body", "nul-bytes")
    cases = [a2a(f"syntax-{k}", b) for k, b in syntax("jsonrpc", "2.0").items() if k in wanted]
    for k, s in BAD_TEXT.items():
        cases.append(a2a(f"method-{k}", b'{"jsonrpc": "2.0", "id": 1, "method": ' + s + b"}"))
    malformed = {
        "batch-empty": [],
        "batch": [get_task],
        "top-level-string": '"tasks/get"',
        "jsonrpc-1.0": {**get_task, "jsonrpc": "1.0"},
        "id-object": {**get_task, "id": {"a": 1}},
        "id-bool": {**get_task, "id": True},
        "id-1e400": b'{"jsonrpc": "2.0", "id": 1e400, "method": "tasks/get", "params": {"id": "x"}}',
        "method-number": {"jsonrpc": "2.0", "id": 1, "method": 5},
        "method-missing": {"jsonrpc": "2.0", "id": 1},
        "method-unknown": rpc("tasks/explode", {}),
        "method-traversal": rpc("../../admin/v1/keys", {}),
        "method-with-nul": rpc("tasks/get\u0000", {"id": "x"}),
        "history-length-1e400": b'{"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"historyLength": 1e400}}',
        "duplicate-method": b'{"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "method": "tasks/cancel", "params": {}}',
        "duplicate-id": b'{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "tasks/get", "params": {"id": "x"}}',
        "duplicate-params": b'{"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"id": "x"}, "params": {"id": "y"}}',
    }
    cases += [a2a(name, body) for name, body in malformed.items()]
    rest_send = "/a2a/echo/a2a/rest/v1/message:send"
    cases += [
        # The JSON-RPC binding answers errors about the call itself with HTTP 200.
        a2a("depth-65", deep(A2A_DEEP, 65), status=[200, 400]),
        a2a("depth-100", deep(A2A_DEEP, 100), status=[200, 400]),
        a2a("depth-200", deep(A2A_DEEP, 200), status=[200, 400]),
        a2a("depth-50000", nested(50_000), status=[200, 400]),
        # Well-formed JSON-RPC with parameters of the wrong type: the agent refuses them.
        a2a("get-params-string", rpc("tasks/get", "x"), reaches_agent=True),
        a2a("get-id-number", rpc("tasks/get", {"id": 5}), reaches_agent=True),
        a2a("send-message-number", rpc("message/send", {"message": 5}), reaches_agent=True),
        a2a("version-9.9", get_task, headers={"A2A-Version": "9.9"}),
        a2a("version-list", get_task, headers={"A2A-Version": "0.3, 1.0"}),
        a2a("version-traversal", get_task, headers={"A2A-Version": "../../x"}),
        a2a("content-type-text", get_task, headers={"Content-Type": "text/plain"}, status=[200, 415]),
        a2a("content-type-missing", get_task, headers={"Content-Type": None}, status=[200, 415]),
        a2a("content-type-json-patch", get_task, headers={"Content-Type": "application/json-patch+json"}, status=[200, 415]),
        a2a("no-credential", get_task, auth=False, status=[401]),
        a2a("junk-credential", get_task, headers={"Authorization": "Bearer junk"}, status=[401]),
        a2a("rest-send-truncated", b'{"message": {', path=rest_send, status=[400]),
        a2a("rest-send-depth-100", deep(b'{"message": {"parts": [], "deep": ', 100), path=rest_send, status=[400]),
    ]
    # Names and paths: the agent's name, and the path forwarded below it.
    card_of = lambda version: dict(path=A2A_CARD, method="GET", headers={"A2A-Version": version})  # noqa: E731
    cases += [
        a2a("rest-get-task-dot-dot", None, path="/a2a/echo/a2a/rest/tasks/%2e%2e", method="GET", headers={"A2A-Version": "1.0"}),
        a2a("rest-get-task-behind-traversal", None, path="/a2a/echo/..%2f..%2fadmin%2ftasks%2fx", method="GET"),
        a2a("agent-dot-segments", None, path="/a2a/agents/../x", method="GET", status=[400, 404], shape="a2a-or-generic"),
        a2a("agent-dot-dot", None, path="/a2a/%2e%2e/.well-known/agent-card.json", method="GET", status=[404]),
        a2a("agent-name-traversal", get_task, path="/a2a/echo%2f..%2fecho/a2a/jsonrpc", status=[404]),
        a2a("agent-name-invalid-utf8", None, path="/a2a/%ff/.well-known/agent-card.json", method="GET", status=[400, 404]),
        a2a("rest-path-invalid-utf8", get_task, path="/a2a/echo/a2a/jsonrpc%ff", status=[400, 404]),
        a2a("rest-path-traversal", get_task, path="/a2a/echo/..%2f..%2fadmin%2fv1%2fkeys"),
        a2a("rest-path-crlf", get_task, path="/a2a/echo/a2a/jsonrpc%0d%0aX-Injected:%20yes"),
        a2a("rest-path-space", get_task, path="/a2a/echo/a2a/json%20rpc"),
        a2a("rest-path-encoded-query", get_task, path="/a2a/echo/a2a/jsonrpc%3Fx=1"),
        a2a("card-version-9.9", None, **card_of("9.9")),
        a2a("card-version-2k", None, **card_of("v" * 2048)),
        a2a("card-version-traversal", None, **card_of("../../etc/passwd")),
        a2a("catalog-version-7.7", None, path="/a2a/agents", method="GET", headers={"A2A-Version": "7.7"}),
        a2a("push-callback-traversal", b"{}", path="/a2a/_push/..%2f..%2fx", shape="push"),
        a2a("push-callback-invalid-utf8", b"{}", path="/a2a/_push/%ff", shape="push"),
        a2a("push-callback-truncated", b'{"task', path="/a2a/_push/no-such-id", shape="push"),
        a2a("push-callback-3mib", b"{" + b" " * (3 * 1024 * 1024) + b"}", path="/a2a/_push/no-such-id", shape="push"),
    ]
    return cases


def admin_cases() -> list[Case]:
    keys, key = "/admin/v1/keys", "/admin/v1/keys/{victim}"
    wanted = ("truncated", "trailing-garbage", "single-quotes", "nan-literal", "utf8-bom", "nul-bytes")
    cases = [admin(f"create-key-syntax-{n}", "POST", keys, b) for n, b in syntax("name", "corpus").items() if n in wanted]
    for n, s in BAD_TEXT.items():
        cases.append(admin(f"create-key-name-{n}", "POST", keys, b'{"name": ' + s + b"}"))
    bad_new_keys = {
        "name-number": {"name": 5},
        "name-empty": {"name": ""},
        "models-string": {"name": "x", "models": "mock-*"},
        "models-numbers": {"name": "x", "models": [1, 2]},
        "enabled-string": {"name": "x", "enabled": "yes"},
        "metadata-array": {"name": "x", "metadata": []},
        "unknown-field": {"name": "x", "is_admin": True},
        "duplicate-name": b'{"name": "x", "name": "y"}',
        "expires-in-1e400": {"name": "x", "expires_in": "1e400d"},
        "expires-in-huge": {"name": "x", "expires_in": "99999999999999999999s"},
        "expires-in-negative": {"name": "x", "expires_in": "-5d"},
        "expires-at-year-275760": {"name": "x", "expires_at": "+275760-09-13T00:00:00Z"},
        "expires-at-invalid": {"name": "x", "expires_at": "2030-13-45T99:99:99Z"},
        "both-expiries": {"name": "x", "expires_at": "2030-01-01T00:00:00Z", "expires_in": "1d"},
        "metadata-1e400": b'{"name": "x", "metadata": {"n": 1e400}}',
        "unknown-user": {"name": "x", "user": "no-such-user"},
        "team-traversal": {"name": "x", "team": "../../etc"},
        "top-level-array": [{"name": "x"}],
        "top-level-null": "null",
    }
    cases += [admin(f"create-key-{n}", "POST", keys, body) for n, body in bad_new_keys.items()]
    cases += [
        admin("create-key-empty-body", "POST", keys, b"", status=[400]),
        admin("create-key-depth-65", "POST", keys, deep(KEY_DEEP, 65), status=[400]),
        admin("create-key-depth-100", "POST", keys, deep(KEY_DEEP, 100), status=[400]),
        admin("create-key-depth-50000", "POST", keys, deep(KEY_DEEP, 50_000), status=[400]),
        admin("update-key-enabled-string", "PATCH", key, {"enabled": "false"}),
        admin("update-key-models-numbers", "PATCH", key, {"models": [1]}),
        admin("update-key-duplicate-enabled", "PATCH", key, b'{"enabled": true, "enabled": false}'),
        admin("update-key-truncated", "PATCH", key, b'{"enabled": '),
        admin("update-key-expires-at-invalid", "PATCH", key, {"expires_at": "yesterday"}),
        admin("update-key-depth-100", "PATCH", key, deep(b'{"metadata": {"a": ', 100), status=[400]),
        admin("rotate-key-grace-negative", "POST", key + "/rotate", {"grace": "-1s"}),
        admin("rotate-key-grace-number", "POST", key + "/rotate", {"grace": 5}),
        admin("rotate-key-grace-1e400", "POST", key + "/rotate", b'{"grace": 1e400}'),
        admin("list-keys-limit-negative", "GET", keys + "?limit=-1", status=[400]),
        admin("list-keys-limit-1e400", "GET", keys + "?limit=1e400", status=[400]),
        admin("list-keys-limit-2-pow-64", "GET", keys + "?limit=18446744073709551616", status=[400]),
        admin("list-keys-after-invalid-utf8", "GET", keys + "?after=%ff", status=[400]),
        admin("list-keys-with-virtual-key", "GET", keys, auth=lambda env: env.key, status=[403]),
        admin("list-keys-junk-credential", "GET", keys, auth=lambda env: "junk", status=[401]),
        admin("trace-keys", "TRACE", keys, status=[405]),
        admin("delete-keys", "DELETE", keys, status=[405]),
    ]
    # Names that are paths: ids with dot segments, encoded separators, NUL, invalid UTF-8.
    cases += [
        admin("get-key-encoded-traversal", "GET", keys + "/..%2f..%2fetc", status=[404]),
        admin("get-key-encoded-dot-dot", "GET", keys + "/%2e%2e", status=[404]),
        admin("get-key-nul", "GET", keys + "/%00", status=[404]),
        admin("get-key-invalid-utf8", "GET", keys + "/%ff", status=[400, 404]),
        admin("update-key-encoded-traversal", "PATCH", keys + "/..%2f..%2fetc", {"enabled": False}, status=[404]),
        admin("revoke-key-encoded-traversal", "POST", keys + "/..%2f..%2fetc/revoke", status=[404]),
        admin("revoke-key-dot-dot", "POST", keys + "/../revoke", status=[404]),
        admin("revoke-key-dot-segments", "POST", keys + "/x/../{victim}/revoke", status=[404]),
        admin("revoke-key-dot-segment-after", "POST", key + "/./revoke", status=[404]),
        admin("dot-segments-out-of-admin", "GET", "/admin/v1/../../etc/passwd", status=[404]),
    ]
    teams, team, users, user = "/admin/v1/teams", "/admin/v1/teams/{team}", "/admin/v1/users", "/admin/v1/users/{user}"
    cases += [
        admin("create-team-dot-dot", "POST", teams, {"id": ".."}, status=[400]),
        admin("create-team-dot", "POST", teams, {"id": "."}, status=[400]),
        admin("create-team-traversal", "POST", teams, {"id": "../x"}, status=[400]),
        admin("create-team-crlf", "POST", teams, {"id": "x\r\ny"}, status=[400]),
        admin("create-team-id-1e400", "POST", teams, b'{"id": 1e400}', status=[400]),
        admin("create-team-roles-string", "POST", teams, {"id": "corpus-bad", "roles": "admin"}, status=[400]),
        admin("create-team-role-with-space", "POST", teams, {"id": "corpus-bad", "roles": ["a b"]}, status=[400]),
        admin("update-team-empty-role", "PATCH", team, {"roles": [""]}, status=[400]),
        admin("update-team-tenant-number", "PATCH", team, {"tenant": 5}, status=[400]),
        admin("update-team-duplicate-name", "PATCH", team, b'{"name": "a", "name": "b"}', status=[400]),
        admin("get-team-encoded-traversal", "GET", teams + "/..%2f..%2fetc", status=[404]),
        admin("update-team-encoded-traversal", "PATCH", teams + "/..%2f..%2fetc", {"name": "x"}, status=[404]),
        admin("delete-team-encoded-traversal", "DELETE", teams + "/..%2f..%2fetc", status=[404]),
        admin("delete-team-dot-dot", "DELETE", teams + "/%2e%2e", status=[404]),
        admin("create-user-dot-dot", "POST", users, {"id": ".."}, status=[400]),
        admin("create-user-traversal", "POST", users, {"id": "../admin"}, status=[400]),
        admin("create-user-team-traversal", "POST", users, {"id": "corpus-bad", "team": "../../etc"}),
        admin("create-user-email-number", "POST", users, {"id": "corpus-bad", "email": 5}, status=[400]),
        admin("update-user-duplicate-team", "PATCH", user, b'{"team": null, "team": "x"}', status=[400]),
        admin("get-user-encoded-traversal", "GET", users + "/..%2f..%2fetc", status=[404]),
        admin("update-user-encoded-traversal", "PATCH", users + "/..%2f..%2fetc", {"name": "x"}, status=[404]),
        admin("delete-user-encoded-traversal", "DELETE", users + "/..%2f..%2fetc", status=[404]),
    ]
    agents, url = "/admin/v1/a2a/agents", {"url": "http://127.0.0.1:9"}
    cases += [
        admin("spend-group-by-traversal", "GET", "/admin/v1/spend?group_by=../../etc", status=[400]),
        admin("spend-since-1e400", "GET", "/admin/v1/spend?since=1e400d", status=[400]),
        admin("spend-limit-negative", "GET", "/admin/v1/spend?limit=-5", status=[400]),
        admin("spend-format-traversal", "GET", "/admin/v1/spend?format=../../etc/passwd", status=[400]),
        admin("spend-since-invalid-utf8", "GET", "/admin/v1/spend?since=%ff", status=[400]),
        admin("budget-reset-encoded-traversal", "POST", "/admin/v1/budgets/..%2f..%2fx/reset", status=[404]),
        admin("budget-reset-invalid-utf8", "POST", "/admin/v1/budgets/%ff/reset", status=[400, 404]),
        admin("budget-reset-truncated", "POST", "/admin/v1/budgets/x/reset", b'{"id": '),
        admin("approval-encoded-traversal", "GET", "/admin/v1/mcp/approvals/..%2f..%2fx", status=[404]),
        admin("approval-invalid-utf8", "GET", "/admin/v1/mcp/approvals/%ff", status=[400, 404]),
        admin("pin-approve-traversal", "POST", "/admin/v1/mcp/pins/..%2fx/..%2fy/approve", {"sha256": "0" * 64},
              status=[404, 409]),
        admin("agent-get-encoded-traversal", "GET", agents + "/..%2f..%2fetc", status=[404]),
        admin("agent-put-dot-dot", "PUT", agents + "/%2e%2e", url, status=[400]),
        admin("agent-put-encoded-traversal", "PUT", agents + "/..%2fx", url, status=[400]),
        admin("agent-put-url-number", "PUT", agents + "/corpus-bad", {"url": 5}, status=[400]),
        admin("agent-put-name-mismatch", "PUT", agents + "/corpus-bad", {**url, "name": "other"}, status=[400]),
        admin("agent-put-truncated", "PUT", agents + "/corpus-bad", b'{"url": ', status=[400]),
        admin("agent-put-config-agent", "PUT", agents + "/echo", url, status=[409]),
    ]
    return cases


# --- the wire: framing, smuggling, header syntax -------------------------------------------------
#
# Header mutations are applied to a valid request of each layer, so that only the hostile part
# can be the reason for a refusal, and accepting it shows as a success. Framing mutations are
# applied to a POST whose body is invalid however it is framed, so that a smuggled or mis-framed
# body cannot turn into a success; the request smuggled after it is a harmless `GET /healthz`,
# which must never be answered.


def valid_request(env: Env, layer: str) -> tuple[bytes, bytes, list[bytes], bytes]:
    """(method, path, header lines, body) of a valid, read-only request on `layer`."""
    if layer == "v1":
        return b"GET", b"/v1/models", [b"Authorization: Bearer " + env.key.encode()], b""
    if layer == "mcp":
        lines = [f"{k}: {v}".encode() for k, v in mcp_headers(env.key, env.session).items()]
        return b"POST", b"/mcp", lines, j(PING)
    if layer == "a2a":
        return b"GET", A2A_CARD.encode(), [b"Authorization: Bearer " + env.key.encode()], b""
    return b"GET", b"/admin/v1/keys", [b"Authorization: Bearer " + env.gw.master_key.encode()], b""


def post_target(env: Env, layer: str) -> tuple[bytes, list[bytes]]:
    """(path, header lines) of each layer's POST endpoint, authenticated."""
    secret = env.gw.master_key if layer == "admin" else env.key
    if layer == "mcp":
        return b"/mcp", [f"{k}: {v}".encode() for k, v in mcp_headers(secret, env.session).items()]
    path = {"v1": CHAT, "a2a": A2A_RPC, "admin": "/admin/v1/keys"}[layer]
    return path.encode(), [b"Authorization: Bearer " + secret.encode(), b"Content-Type: application/json"]


def assemble(start: bytes, lines: list[bytes], body: bytes = b"", eol: bytes = b"\r\n") -> bytes:
    return start + eol + b"".join(line + eol for line in lines) + eol + body


def host(env: Env) -> bytes:
    return b"Host: " + env.hostport.encode()


def mutated(env, layer, *, extra=(), auth=None, eol=b"\r\n", start=b"METHOD PATH HTTP/1.1", hosts=None) -> bytes:
    """`layer`'s valid request with extra header lines, its Authorization line rewritten by
    `auth`, another line ending, request line (METHOD and PATH filled in) or Host lines."""
    method, path, lines, body = valid_request(env, layer)
    if auth is not None:
        lines = [auth(line) if line.startswith(b"Authorization") else line for line in lines]
    host_lines = [host(env)] if hosts is None else hosts(host(env))
    length = [b"Content-Length: %d" % len(body)] if body else []
    start = start.replace(b"METHOD", method).replace(b"PATH", path)
    return assemble(start, host_lines + lines + length + list(extra), body, eol)


HEADER_MUTATIONS = {
    "obs-fold": dict(extra=[b"X-Folded: a\r\n b"]),
    "obs-fold-in-authorization": dict(auth=lambda a: a.replace(b"Bearer ", b"Bearer\r\n ")),
    "bare-lf-line-endings": dict(eol=b"\n"),
    "bare-lf-injects-authorization": dict(auth=lambda a: b"X-Note: hi\n" + a),
    "bare-cr-in-value": dict(extra=[b"X-Note: a\rb"]),
    "nul-in-value": dict(extra=[b"X-Note: a\x00b"]),
    "crlf-then-space-in-value": dict(extra=[b"X-Note: a\r\n\tb"]),
    "space-before-colon": dict(auth=lambda a: a.replace(b":", b" :", 1)),
    "header-without-colon": dict(extra=[b"X-Note hi"]),
    "header-name-not-a-token": dict(extra=[b"X(Note): hi"]),
    "header-name-with-del": dict(extra=[b"X\x7fNote: hi"]),
    "duplicate-host": dict(hosts=lambda h: [h, b"Host: evil.example"]),
    "missing-host": dict(hosts=lambda h: []),
    "invalid-host": dict(hosts=lambda h: [b"Host: a b/c"]),
    "headers-over-64kib-one": dict(extra=[b"X-Pad: " + b"a" * (70 * 1024)]),
    "headers-over-64kib-many": dict(extra=[b"X-Pad-%d: %s" % (i, b"a" * 1000) for i in range(70)]),
    "header-1mib": dict(extra=[b"X-Pad: " + b"a" * (1024 * 1024)]),
    "101-headers": dict(extra=[b"X-H-%d: 1" % i for i in range(101)]),
    "url-70kib": dict(start=b"METHOD PATH?pad=" + b"a" * (70 * 1024) + b" HTTP/1.1"),
    "invalid-method": dict(start=b"G\x01T PATH HTTP/1.1"),
    "http-2.0-on-http1": dict(start=b"METHOD PATH HTTP/2.0"),
    "http-1.2": dict(start=b"METHOD PATH HTTP/1.2"),
    "no-http-version": dict(start=b"METHOD PATH"),
    "raw-utf8-in-path": dict(start=b"METHOD PATH/\xff\xfe HTTP/1.1"),
    "space-in-path": dict(start=b"METHOD PATH x HTTP/1.1"),
    "crlf-in-request-line": dict(start=b"METHOD PATH?x=\r\nX-Injected: y HTTP/1.1"),
}
# Request headers over 64 KiB in all (limits.max_header_size) are refused with 431.
HEADERS_TOO_LARGE = {"headers-over-64kib-one", "headers-over-64kib-many", "header-1mib", "101-headers"}

SMUGGLED = b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: smuggled\r\n\r\n"  # an empty chunked body, then a request
SMUGGLED_LENGTH = b"Content-Length: %d" % len(SMUGGLED)
TE = b"Transfer-Encoding: chunked"
# name: (header lines, body[, HTTP version]). Whatever the server takes for a second request
# must get no answer but a refusal, so every answer on the connection is read.
FRAMING_MUTATIONS = {
    "content-length-and-chunked": ([SMUGGLED_LENGTH, TE], SMUGGLED),
    "chunked-and-content-length": ([TE, SMUGGLED_LENGTH], SMUGGLED),
    "xchunked-and-content-length": ([b"Transfer-Encoding: xchunked", SMUGGLED_LENGTH], SMUGGLED),
    "chunked-then-identity": ([b"Transfer-Encoding: chunked, identity", SMUGGLED_LENGTH], SMUGGLED),
    "two-transfer-encodings": ([TE, b"Transfer-Encoding: identity", SMUGGLED_LENGTH], SMUGGLED),
    "folded-transfer-encoding": ([b"Transfer-Encoding:\r\n chunked", SMUGGLED_LENGTH], SMUGGLED),
    "transfer-encoding-vertical-tab": ([b"Transfer-Encoding:\x0bchunked", SMUGGLED_LENGTH], SMUGGLED),
    "chunked-in-http-1.0": ([TE], SMUGGLED, b"HTTP/1.0"),
    "conflicting-content-lengths": ([b"Content-Length: 2", b"Content-Length: 40"], b'{}"model": "mock-echo", "x": 1}       '),
    "content-length-list": ([b"Content-Length: 2, 40"], b"{}" + b" " * 38),
    "content-length-plus": ([b"Content-Length: +2"], b"{}"),
    "content-length-negative": ([b"Content-Length: -1"], b"{}"),
    "content-length-overflow": ([b"Content-Length: 99999999999999999999"], b"{}"),
    "content-length-hex": ([b"Content-Length: 0x2"], b"{}"),
    "chunk-size-overflow": ([TE], b"fffffffffffffffff0\r\nxx\r\n0\r\n\r\n"),
    "chunk-size-not-hex": ([TE], b"zz\r\nxx\r\n0\r\n\r\n"),
    "chunk-bare-lf": ([TE], b"2\n{}\n0\n\n"),
    "chunk-longer-than-size": ([TE], b"1\r\n{}\r\n0\r\n\r\n"),
    "content-length-shorter-than-body": ([b"Content-Length: 1"], b'{"model": "mock-echo"}\r\n\r\n'),
    "oversized-expect-continue": ([b"Content-Length: %d" % (10 * 1024 * 1024), b"Expect: 100-continue"], b""),
}
# Bodies cut short: the client then shuts its side, so the server sees the stream end.
HALF_CLOSED_MUTATIONS = {
    "content-length-longer-than-body": ([b"Content-Length: 100"], b'{"model": "mo'),
    "chunked-without-last-chunk": ([TE], b"2\r\n{}\r\n"),
}
LAYER_SHAPE = {"v1": "openai", "mcp": "jsonrpc", "a2a": "a2a", "admin": "admin"}


def framed(env: Env, layer: str, lines: list[bytes], body: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    path, base = post_target(env, layer)
    return assemble(b"POST " + path + b" " + version, [host(env), *base, *lines], body)


def wire_cases() -> list[Case]:
    cases = []
    for layer in ("v1", "mcp", "a2a", "admin"):

        def case(name, build, status=(), pipelined=False, layer=layer) -> Case:
            return Case(f"wire-{name}", layer, LAYER_SHAPE[layer], build, frozenset(status), wire=True, pipelined=pipelined)

        for name, kw in HEADER_MUTATIONS.items():
            status = [431] if name in HEADERS_TOO_LARGE else []
            cases.append(case(name, lambda env, kw=kw, layer=layer: Raw(mutated(env, layer, **kw)), status))
        for name, spec in FRAMING_MUTATIONS.items():
            status = [413, 417] if name == "oversized-expect-continue" else []
            build = lambda env, spec=spec, layer=layer: Raw(framed(env, layer, *spec))  # noqa: E731
            cases.append(case(name, build, status, pipelined=True))
        for name, spec in HALF_CLOSED_MUTATIONS.items():
            cases.append(case(name, lambda env, spec=spec, layer=layer: Raw(framed(env, layer, *spec), half_close=True)))
    return cases


def oversize(name: str, layer: str, path: str, shape: str, headers: Callable[[Env], list[bytes]]) -> list[Case]:
    """A body over the limit, declared (Content-Length, body not sent: refused from the header
    alone) and chunked (refused while it streams in), on a kept-alive connection."""
    start = b"POST " + path.encode() + b" HTTP/1.1"

    def declared(env: Env) -> Raw:
        return Raw(assemble(start, [host(env), *headers(env), b"Content-Length: %d" % (LIMIT + 1)]))

    def chunked(env: Env) -> Raw:
        body = b'{"pad": "' + b"x" * (LIMIT + LIMIT // 4) + b'"}'
        pieces = (body[i : i + 8192] for i in range(0, len(body), 8192))
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in pieces) + b"0\r\n\r\n"
        return Raw(assemble(start, [host(env), *headers(env), TE], chunks))

    return [
        Case(f"{name}-declared", layer, shape, declared, frozenset([413]), check_close=True),
        Case(f"{name}-chunked", layer, shape, chunked, frozenset([413]), check_close=True),
    ]


def corpus() -> list[Case]:
    cases = v1_cases() + mcp_cases() + a2a_cases() + admin_cases() + wire_cases()

    def key_json(env: Env) -> list[bytes]:
        return [b"Authorization: Bearer " + env.key.encode(), b"Content-Type: application/json"]

    def master_json(env: Env) -> list[bytes]:
        return [b"Authorization: Bearer " + env.gw.master_key.encode(), b"Content-Type: application/json"]

    def mcp_session(env: Env) -> list[bytes]:
        return [f"{k}: {v}".encode() for k, v in mcp_headers(env.key, env.session).items()]

    cases += oversize("oversized", "v1", CHAT, "openai", key_json)
    cases += oversize("messages-oversized", "v1", "/v1/messages", "anthropic", key_json)
    cases += oversize("oversized", "mcp", "/mcp", "jsonrpc", mcp_session)
    cases += oversize("oversized", "a2a", A2A_RPC, "a2a", key_json)
    cases += oversize("create-key-oversized", "admin", "/admin/v1/keys", "admin", master_json)
    return cases


CASES = corpus()
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
assert len(CASES) >= 200, len(CASES)


# --- fixtures and tests -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("tollgate-bad-input")
    db = workdir / "tollgate.db"
    with contextlib.ExitStack() as stack:
        files = stack.enter_context(start_upstream("streamable-http", name="files"))
        agent = stack.enter_context(start_agent("corpus-agent"))
        config = CONFIG.format(master=MASTER_KEY, db=db, files=files.url, agent=agent.url)
        gw = stack.enter_context(launch_gateway(workdir, config))
        # No connection reuse: every case and every probe starts on a fresh connection.
        http = stack.enter_context(httpx.Client(timeout=CASE_TIMEOUT, limits=httpx.Limits(max_keepalive_connections=0)))

        def created(path: str, body: dict) -> dict:
            res = gw.admin("POST", path, json=body)
            assert res.status_code == 201, f"{path}: {res.status_code} {res.text}"
            return res.json()

        team = created("/admin/v1/teams", {"id": "corpus-team"})["id"]
        user = created("/admin/v1/users", {"id": "corpus-user", "team": team})["id"]
        key = created("/admin/v1/keys", {"name": "corpus", "user": user})
        probe_key = created("/admin/v1/keys", {"name": "corpus-probe"})
        victim = created("/admin/v1/keys", {"name": "corpus-victim", "models": ["mock-*"]})
        env = Env(
            gw=gw,
            db=db,
            agent=agent,
            http=http,
            key=key["secret"],
            key_id=key["key"]["id"],
            probe=probe_key["secret"],
            probe_id=probe_key["key"]["id"],
            victim=victim["key"]["id"],
            team=team,
            user=user,
            session=mcp_initialize(gw, key["secret"]),
            probe_session=mcp_initialize(gw, probe_key["secret"]),
        )
        # What the first use of each layer records legitimately happens before the snapshot:
        # tool pins on the first listing, each card version's digest on the first fetch.
        res = http.post(f"{gw.origin}/mcp", json=rpc("tools/list"), headers=mcp_headers(env.key, env.session))
        assert res.status_code == 200 and res.json()["result"]["tools"], res.text
        for version in (None, "0.3", "1.0"):
            headers = {**bearer(env.key), **({"A2A-Version": version} if version else {})}
            res = http.get(f"{gw.origin}{A2A_CARD}", headers=headers)
            assert res.status_code == 200, res.text
        assert http.get(f"{gw.origin}/a2a/agents", headers=bearer(env.key)).status_code == 200
        for layer in ("v1", "mcp", "a2a", "admin"):
            assert probe(env, layer) is None, probe(env, layer)
        flush_store(env)
        env.before = env.state = snapshot(db)
        latest = last_ids(env.before, {})
        env.audit_seq, env.ledger_id = latest["audit_log"], latest["ledger"]
        env.listings = listings(env)
        yield env


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_refused_cleanly(env: Env, case: Case) -> None:
    if case.layer == "a2a":
        env.agent.clear()
    req = case.build(env)
    out = send(env, req, case.pipelined, case.check_close)
    problems = judge(case, out)
    if case.layer == "a2a" and not case.reaches_agent:
        reached = [f"{s['method']} {s['path']}?{s['query']}" for s in env.agent.seen()]
        if reached:
            problems.append(f"reached the agent: {reached}")
    for reply in out.replies:
        if any(name.startswith(("set-cookie", "x-injected")) for name in reply.headers):
            problems.append(f"a header was injected into the response: {reply.headers}")
    problems += store_effects(env)
    problems += health(env, case.layer)
    assert not problems, f"{case.id}: {'; '.join(problems)}\n  sent: {describe(req)}\n  got: {out.summary()}"


def test_every_layer_still_serves(env: Env) -> None:
    for layer in ("v1", "mcp", "a2a", "admin"):
        assert probe(env, layer) is None, probe(env, layer)
    assert env.gw.proc is not None and env.gw.proc.poll() is None
    assert b"panicked" not in env.gw.stderr_path.read_bytes()


def test_the_store_did_not_change(env: Env) -> None:
    """Over the whole corpus, compared with the store as it was before the first case."""
    flush_store(env)
    before, after = env.before, snapshot(env.db)
    problems = store_diff(protected(before), protected(after))

    # The audit chain and the ledger only grow, with records of refusals (see above).
    seen = last_ids(before, {})
    for table in ROW_ID:
        if after[table][: len(before[table])] != before[table]:
            problems.append(f"{table} records written before the corpus were changed")
    if accepted := accepted_in_audit(env, after, seen["audit_log"]):
        problems.append(f"the audit chain records successes: {accepted}")
    if served := served_in_ledger(env, after, seen["ledger"]):
        problems.append(f"the ledger records served requests: {served}")

    # The hourly rollup: whatever the corpus added is failed, unpriced requests.
    def rollup(snap: dict) -> dict[tuple, dict]:
        dims = ("hour_ms", "key_id", "user_id", "team_id", "model", "provider")
        return {tuple(r[d] for d in dims): r for r in snap["ledger_hourly"] if r["key_id"] != env.probe_id}

    old = rollup(before)
    for k, r in rollup(after).items():
        o = old.get(k, {"requests": 0, "failed": 0, "cost_usd": 0})
        if r["requests"] - o["requests"] != r["failed"] - o["failed"] or r["cost_usd"] != o["cost_usd"]:
            problems.append(f"the ledger's hourly rollup counts served requests: {r}")

    now = listings(env)
    for what, was in env.listings.items():
        if now[what] != was:
            problems.append(f"the admin API's {what} changed: before {short(was, 600)}, after {short(now[what], 600)}")
    assert not problems, "\n".join(problems)
