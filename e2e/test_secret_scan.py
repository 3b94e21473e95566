"""Secrets never reach the logs, the spans or the store.

One gateway is started with every kind of secret tollgate handles, each a distinctive random
string (a recognisable prefix and 128 random bits):

* the master key (inline in the config);
* virtual keys minted through the admin API (created, then rotated: both secrets);
* an `openai` provider's `api_key` from the environment (`${UPSTREAM_KEY}`), also used by
  `anthropic` (`x-api-key`) and `gemini` (`x-goog-api-key`) providers and by a provider whose
  upstream answers 401;
* a provider `api_key` read from a file (`${file:/abs/path}`, the file ending in newlines), also
  used by a provider whose upstream answers 500;
* a `bedrock` provider's `secret_access_key` (env; never sent, only signed with) and
  `session_token`;
* an MCP upstream's static `Authorization` header (on a working upstream and on one that
  answers 401), an MCP upstream's OAuth `client_secret` (env), a wrong `client_secret` its
  token endpoint refuses, and a stdio MCP server's `env` value (the server starts only if it
  got it);
* an A2A agent's `headers` credential (on a working agent and on one that answers 401), and an
  admin-registered agent's header credential;
* the `telemetry.otlp.headers` value.

Logging is `level: trace, format: json`, and spans go to an OTLP/HTTP collector run in this
process (its first export is refused). Traffic touches every secret: model calls streamed and
not, answered, refused by the upstream (400, 401, 500) and refused by the gateway for wrong keys
that contain a real key (the key plus a character, a character plus the key, the key less its
last character) on every layer, MCP `tools/list` and `tools/call`, A2A `message/send` and
`SendMessage`, admin calls (create, read, rotate, revoke keys; register, read and delete an
agent; a wrong master key), a config reload, `tollgate check`. Then the gateway is stopped
(SIGTERM) and every sink is searched, as raw bytes, for each secret and for every 16-character
window of its random part: stdout, stderr, the OTLP export bodies, `tollgate check`'s output,
`tollgate audit export`, the admin API's read answers, and every file the gateway wrote (the
SQLite database, its -wal and -shm, spill files; an admin-registered agent's credential may be
in the store, which needs it to call the agent). Credentials minted or fetched at run time are
searched too: the OAuth access tokens the MCP upstream issued and the identity tokens the
gateway minted for the agent. The clients' credentials (master and virtual keys) are also
searched for in what the upstreams received.

The scan is checked not to be vacuous: each secret is shown to have reached its upstream (or
collector) exactly, the logs are JSON at trace level and hold the access log of the traffic, the
collector received the model, tool and agent spans, and the store and the other sinks are not
empty.

`test_rejected_configs_do_not_echo_secrets` runs `tollgate check` on configs with mistakes next
to (or in the shape of) secret fields and searches its output the same way;
`test_rejected_reload_does_not_log_or_audit_secrets` makes the same mistakes in a running
gateway's config file and searches its log, its audit chain and its store."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import anyio
import httpx
import openai
import pytest
from conftest import CONFIG_HEAD, Gateway, _binary, launch_gateway, wait_for
from mcp import MCPError
from mcp_client_util import UPSTREAM_SCRIPT, connect, start_upstream, text_of
from test_a2a_gateway import Agent, start_agent

TIMEOUT = 30.0
WINDOW = 16  # a leaked run of this many random characters counts as a leak (64+ bits)
OAUTH_CLIENT_ID = "scan-gateway-client"
MARKER = f"scan-final-{uuid.uuid4().hex}"


# --- the secrets -------------------------------------------------------------------------------


def seeded(prefix: str) -> str:
    """A distinctive secret: a recognisable prefix and 32 random hex digits."""
    return f"{prefix}-{secrets.token_hex(16)}"


@dataclass
class Needle:
    """One secret to search for: the whole value, and every WINDOW-long run of its random part."""

    name: str
    value: str
    random_part: str
    # Sinks (by name prefix) where this secret may legitimately be found.
    allowed_in: tuple[str, ...] = ()

    def patterns(self) -> Iterator[tuple[str, bytes]]:
        yield "whole secret", self.value.encode()
        part = self.random_part
        if len(part) > WINDOW:
            for i in range(len(part) - WINDOW + 1):
                yield f"{WINDOW} characters of it at offset {i}", part[i : i + WINDOW].encode()


def needle(name: str, value: str, allowed_in: tuple[str, ...] = (), random_part: str | None = None) -> Needle:
    """`value` is `prefix-<random>` (seeded) or `tg-<random>` (a virtual key), unless
    `random_part` says which part of it is random."""
    if random_part is None:
        random_part = value[3:] if value.startswith("tg-") else value.rsplit("-", 1)[1]
    return Needle(name, value, random_part, allowed_in)


@dataclass
class Leak:
    sink: str
    secret: str
    how: str
    context: str

    def __str__(self) -> str:
        return f"{self.secret} ({self.how}) in {self.sink}: ...{self.context}..."


def scan(sinks: dict[str, bytes], needles: list[Needle]) -> list[Leak]:
    leaks = []
    for sink, data in sinks.items():
        for n in needles:
            if any(sink.startswith(a) for a in n.allowed_in):
                continue
            for how, pattern in n.patterns():
                at = data.find(pattern)
                if at >= 0:
                    context = data[max(0, at - 160) : at + len(pattern) + 160]
                    text = context.decode("utf-8", "replace")
                    text = "".join(ch if ch.isprintable() else "." for ch in text)
                    leaks.append(Leak(sink, n.name, how, text))
                    break
    return leaks


# --- an HTTP recorder: the OTLP collector and the upstreams that refuse --------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """A threaded HTTP server that records every request:

    * `POST /v1/traces`: an OTLP/HTTP collector (the first export is answered 503, to exercise
      the exporter's failure path; later ones 200);
    * `/openai-401/v1/...`: an OpenAI-compatible upstream that refuses the gateway's key (401,
      OpenAI's body, the key masked as OpenAI masks it);
    * `/openai-500/v1/...`: one that fails (500);
    * `/mcp-401/...` and `/a2a-401/...`: an MCP server and an A2A agent refusing the gateway's
      credential (401).
    """

    server: ThreadingHTTPServer | None = None
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def origin(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def requests(self, prefix: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path.startswith(prefix)]

    def otlp_bodies(self) -> list[bytes]:
        return [s.body for s in self.requests("/v1/traces")]

    def otlp_accepted(self) -> bytes:
        """The bodies of the exports answered 200 (all but the first)."""
        return b"".join(self.otlp_bodies()[1:])

    def start(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("content-length") or 0)
                return self.rfile.read(length) if length else b""

            def _reply(self, status: int, body: bytes, content_type: str = "application/json", **extra: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                with recorder.lock:
                    recorder.seen.append(Seen(self.command, self.path, headers, body))
                    otlp_count = sum(1 for s in recorder.seen if s.path.startswith("/v1/traces"))
                path = self.path
                if path.startswith("/v1/traces"):
                    if otlp_count == 1:
                        self._reply(503, b'{"error": "collector warming up"}')
                    else:
                        self._reply(200, b"", content_type="application/x-protobuf")
                elif path.startswith("/openai-401/"):
                    presented = headers.get("authorization", "").removeprefix("Bearer ")
                    masked = presented[:3] + "*" * 20 + presented[-4:] if len(presented) > 8 else "***"
                    self._reply(
                        401,
                        json.dumps(
                            {
                                "error": {
                                    "message": f"Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys.",
                                    "type": "invalid_request_error",
                                    "param": None,
                                    "code": "invalid_api_key",
                                }
                            }
                        ).encode(),
                    )
                elif path.startswith("/openai-500/"):
                    self._reply(
                        500,
                        b'{"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}',
                    )
                elif path.startswith("/mcp-401/"):
                    self._reply(
                        401,
                        b'{"error": "invalid_token", "error_description": "bad bearer token"}',
                        WWW_Authenticate='Bearer error="invalid_token"',
                    )
                elif path.startswith("/a2a-401/"):
                    self._reply(401, b'{"error": "unauthorized"}')
                else:
                    self._reply(404, b'{"error": "no such route"}')

            do_GET = do_POST = do_DELETE = _handle  # noqa: N815 (stdlib names)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="scan-recorder", daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@contextlib.contextmanager
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    rec.start()
    try:
        yield rec
    finally:
        rec.stop()


# --- the A2A agent -----------------------------------------------------------------------------


# --- the config --------------------------------------------------------------------------------

CONFIG = CONFIG_HEAD + """\
logging:
  level: trace
  format: json
reload:
  interval: 100ms
telemetry:
  otlp:
    endpoint: {collector}
    export_interval: 200ms
    service_name: tollgate-secret-scan
    headers:
      x-otlp-token: {otlp}
providers:
  - name: env-up
    kind: openai
    base_url: {providers}/openai/v1
    api_key: ${{UPSTREAM_KEY}}
  - name: file-up
    kind: openai
    base_url: {providers}/openai/v1
    api_key: ${{file:{key_file}}}
  - name: ant-up
    kind: anthropic
    base_url: {providers}/anthropic/v1
    api_key: ${{UPSTREAM_KEY}}
  - name: gem-up
    kind: gemini
    base_url: {providers}/gemini/v1beta
    api_key: ${{UPSTREAM_KEY}}
  - name: bedrock-up
    kind: bedrock
    base_url: {providers}/bedrock
    region: us-east-1
    access_key_id: AKIDSCANGATEWAY
    secret_access_key: ${{SCAN_AWS_SECRET}}
    session_token: {aws_token}
  - name: refusing-up
    kind: openai
    base_url: {recorder}/openai-401/v1
    api_key: ${{UPSTREAM_KEY}}
  - name: failing-up
    kind: openai
    base_url: {recorder}/openai-500/v1
    api_key: ${{file:{key_file}}}
models:
  - name: env-model
    targets: [{{provider: env-up, model: gpt-upstream}}]
  - name: file-model
    targets: [{{provider: file-up, model: gpt-upstream}}]
  - name: ant-model
    targets: [{{provider: ant-up, model: claude-upstream}}]
  - name: gem-model
    targets: [{{provider: gem-up, model: gemini-upstream}}]
  - name: bedrock-model
    targets: [{{provider: bedrock-up, model: "anthropic.claude-upstream-v1:0"}}]
  - name: refused-model
    targets: [{{provider: refusing-up, model: gpt-upstream}}]
    retry: {{attempts: 1}}
    cooldown: {{failures: 1000000}}
  - name: failing-model
    targets: [{{provider: failing-up, model: gpt-upstream}}]
    retry: {{attempts: 1}}
    cooldown: {{failures: 1000000}}
{extra_models}mcp:
  prefix: conditional
  servers:
    - name: files
      url: {mcp_files}
      headers: {{Authorization: "Bearer {mcp_header}"}}
    - name: vault
      url: {mcp_vault}
      oauth:
        token_url: {mcp_vault_token}
        client_id: {oauth_client_id}
        client_secret: ${{MCP_OAUTH_SECRET}}
    # The same authorization server refuses this client's (wrong) secret.
    - name: denied
      url: {mcp_vault}
      oauth:
        token_url: {mcp_vault_token}
        client_id: {oauth_client_id}
        client_secret: {mcp_oauth_wrong}
    - name: refusing
      url: {recorder}/mcp-401/mcp
      headers: {{Authorization: "Bearer {mcp_header}"}}
    - name: local
      command: {python}
      args: {stdio_args}
      env: {{PYTHONUNBUFFERED: "1", SCAN_STDIO_TOKEN: {stdio_env}}}
a2a:
  agents:
    - name: echo
      url: {agent}
      headers: {{x-agent-credential: {a2a_header}}}
    - name: refusing
      url: {recorder}/a2a-401
      headers: {{x-agent-credential: {a2a_header}}}
"""


@dataclass
class Secrets:
    master: str = field(default_factory=lambda: seeded("scanmaster"))
    upstream_env: str = field(default_factory=lambda: seeded("sk-scanenv"))
    upstream_file: str = field(default_factory=lambda: seeded("sk-scanfile"))
    mcp_header: str = field(default_factory=lambda: seeded("scanmcphdr"))
    mcp_oauth: str = field(default_factory=lambda: seeded("scanmcpoauth"))
    mcp_oauth_wrong: str = field(default_factory=lambda: seeded("scanmcpwrong"))
    a2a_header: str = field(default_factory=lambda: seeded("scana2ahdr"))
    a2a_admin_header: str = field(default_factory=lambda: seeded("scana2aadmin"))
    otlp_header: str = field(default_factory=lambda: seeded("scanotlphdr"))
    aws_secret: str = field(default_factory=lambda: seeded("scanawssecret"))
    aws_token: str = field(default_factory=lambda: seeded("scanawstoken"))
    stdio_env: str = field(default_factory=lambda: seeded("scanstdio"))

    def env(self) -> dict[str, str]:
        return {"UPSTREAM_KEY": self.upstream_env, "MCP_OAUTH_SECRET": self.mcp_oauth, "SCAN_AWS_SECRET": self.aws_secret}


# The stdio MCP server, started only if its environment carries the secret (so the secret is
# known to have been delivered): the upstream script run as __main__ behind a check.
STDIO_BOOT = (
    "import os, runpy, sys; "
    "assert os.environ.get('SCAN_STDIO_TOKEN', '').startswith('scanstdio-'), 'SCAN_STDIO_TOKEN not set'; "
    "sys.argv = [sys.argv[1], '--transport', 'stdio', '--name', 'local']; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def render(s: Secrets, key_file: Path, db: Path, provider_mock: str, rec: Recorder, files, vault, agent: Agent, extra_models: str = "") -> str:
    return CONFIG.format(
        master=s.master,
        db=db,
        collector=rec.origin,
        otlp=s.otlp_header,
        providers=provider_mock,
        key_file=key_file,
        recorder=rec.origin,
        extra_models=extra_models,
        mcp_files=files.url,
        mcp_header=s.mcp_header,
        mcp_vault=vault.url,
        mcp_vault_token=f"{vault.base_url}/token",
        oauth_client_id=OAUTH_CLIENT_ID,
        mcp_oauth_wrong=s.mcp_oauth_wrong,
        agent=agent.url,
        a2a_header=s.a2a_header,
        aws_token=s.aws_token,
        python=json.dumps(sys.executable),
        stdio_args=json.dumps(["-c", STDIO_BOOT, str(UPSTREAM_SCRIPT)]),
        stdio_env=s.stdio_env,
    )


# --- helpers -----------------------------------------------------------------------------------


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wrong_variants(key: str) -> list[str]:
    """Wrong credentials that contain the real one: a character after it, one before it, and
    the key less its last character."""
    return [key + "x", "x" + key, key[:-1]]


def chat(gw: Gateway, key: str, model: str, text: str, stream: bool = False, **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    with httpx.Client(timeout=TIMEOUT) as http:
        with http.stream("POST", f"{gw.base_url}/chat/completions", json=body, headers={**bearer(key), **headers}) as res:
            res.read()
            return res


def sdk_calls(gw: Gateway, key: str) -> None:
    """Model calls through the official OpenAI SDK: answered, streamed, and refused upstream."""
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=TIMEOUT)
    for model in ("env-model", "file-model", "ant-model", "gem-model", "bedrock-model"):
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "scan hello"}])
        assert answer.choices[0].message.content == "You said: scan hello", (model, answer)
        chunks = list(
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "scan stream"}], stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "You said: scan stream", (model, text)
    # The upstream refuses the gateway's key (401) or fails (500): 502 to the client, streamed
    # or not, and the provider mock's own 400 relayed.
    for model, status in (("refused-model", 502), ("failing-model", 502)):
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as err:
                created = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "scan error"}], stream=stream
                )
                if stream:
                    list(created)
            assert err.value.status_code == status, (model, stream, err.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="env-model", messages=[{"role": "user", "content": "please fail with 400"}])


def refused_with_wrong_keys(gw: Gateway, real: str) -> None:
    """Every layer refuses credentials that merely contain the real key."""
    for wrong in wrong_variants(real):
        for stream in (False, True):
            res = chat(gw, wrong, "env-model", "scan wrong key", stream=stream)
            assert res.status_code == 401, (res.status_code, res.text)
        res = httpx.post(
            f"{gw.base_url}/messages",
            headers={"x-api-key": wrong, "anthropic-version": "2023-06-01"},
            json={"model": "env-model", "max_tokens": 16, "messages": [{"role": "user", "content": "scan"}]},
            timeout=TIMEOUT,
        )
        assert res.status_code == 401, res.text
        res = httpx.post(
            f"{gw.origin}/mcp",
            headers={**bearer(wrong), "Accept": "application/json, text/event-stream"},
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "scan", "version": "0"}},
            },
            timeout=TIMEOUT,
        )
        assert res.status_code == 401, res.text
        res = a2a_send(gw, "echo", wrong, "hello")
        assert res.status_code == 401, res.text
        res = httpx.get(f"{gw.origin}/admin/v1/keys", headers=bearer(wrong), timeout=TIMEOUT)
        assert res.status_code == 401, res.text


def a2a_send(gw: Gateway, agent: str, key: str, text: str, version: str = "0.3") -> httpx.Response:
    if version == "0.3":
        method = "message/send"
        message = {"kind": "message", "messageId": str(uuid.uuid4()), "role": "user", "parts": [{"kind": "text", "text": text}]}
    else:
        method = "SendMessage"
        message = {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"text": text}]}
    return httpx.post(
        f"{gw.origin}/a2a/{agent}/a2a/jsonrpc",
        headers={**bearer(key), "A2A-Version": version, "Content-Type": "application/json"},
        json={"jsonrpc": "2.0", "id": 7, "method": method, "params": {"message": message}},
        timeout=TIMEOUT,
    )


async def mcp_calls(gw: Gateway, key: str) -> None:
    async with connect(f"{gw.origin}/mcp", bearer(key)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        # `refusing` answered 401 and `denied` got no token: both are left out; `files`, `vault`
        # and `local` share tool names.
        assert {"files_echo", "vault_echo", "local_echo", "files_add"} <= names, names
        assert text_of(await client.call_tool("files_echo", {"text": "scan tool"})) == "scan tool"
        assert text_of(await client.call_tool("vault_echo", {"text": "scan vault"})) == "scan vault"
        assert text_of(await client.call_tool("local_echo", {"text": "scan stdio"})) == "scan stdio"
        assert text_of(await client.call_tool("files_add", {"a": 20, "b": 22})) == "42"
        # A tool of the upstream that refused the gateway's credential is unknown.
        with pytest.raises(MCPError):
            await client.session.call_tool("refusing_echo", {"text": "x"})


def run_check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(_binary()), "check", "--config", str(config)],
        capture_output=True,
        timeout=60,
        env=env,
    )


def check_env(s: Secrets) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "TOLLGATE_MASTER_KEY")}
    return {**env, **s.env()}


def store_files(workdir: Path, skip: set[Path]) -> dict[str, bytes]:
    """Every file the gateway may have written under its working directory."""
    out = {}
    for path in sorted(workdir.rglob("*")):
        if path.is_file() and path not in skip:
            out[f"file {path.relative_to(workdir)}"] = path.read_bytes()
    return out


def jwt_tokens(agent: Agent) -> list[str]:
    """The identity tokens the gateway minted for the agent (its `Authorization: Bearer`)."""
    tokens = set()
    for seen in agent.seen():
        auth = seen["headers"].get("authorization", "")
        if auth.startswith("Bearer ") and auth.count(".") == 2:
            tokens.add(auth.removeprefix("Bearer "))
    return sorted(tokens)


# --- the test ----------------------------------------------------------------------------------


@pytest.fixture
def scan_env(monkeypatch: pytest.MonkeyPatch) -> Secrets:
    s = Secrets()
    for k, v in s.env().items():
        monkeypatch.setenv(k, v)
    # The config's logging level must be what runs.
    monkeypatch.delenv("RUST_LOG", raising=False)
    return s


def test_no_secret_in_logs_spans_store_or_check_output(tmp_path: Path, provider_mock: str, scan_env: Secrets) -> None:
    s = scan_env
    workdir = tmp_path / "gw"
    workdir.mkdir()
    key_file = tmp_path / "secrets" / "upstream-key.txt"
    key_file.parent.mkdir()
    # Trailing newlines, as editors and `echo` leave them: the interpolation strips them.
    key_file.write_text(s.upstream_file + "\n\n")
    db = workdir / "data" / "tollgate.db"

    minted: dict[str, str] = {}
    sinks: dict[str, bytes] = {}
    admin_reads: list[bytes] = []

    with contextlib.ExitStack() as stack:
        rec = stack.enter_context(recorder())
        files = stack.enter_context(start_upstream("streamable-http", name="files"))
        vault = stack.enter_context(
            start_upstream("streamable-http", name="vault", extra_args=["--oauth", f"{OAUTH_CLIENT_ID}:{s.mcp_oauth}"])
        )
        agent = stack.enter_context(start_agent("scan-agent"))
        config_text = render(s, key_file, db, provider_mock, rec, files, vault, agent)
        gw = stack.enter_context(launch_gateway(workdir, config_text))
        gw.master_key = s.master
        config_path = gw.config_path

        def admin(method: str, path: str, body: dict | None = None, expect: int = 200) -> dict:
            res = httpx.request(method, f"{gw.origin}{path}", json=body, headers=bearer(s.master), timeout=TIMEOUT)
            assert res.status_code == expect, f"{method} {path}: {res.status_code} {res.text}"
            return res.json() if res.content else {}

        # Admin: a virtual key.
        created = admin("POST", "/admin/v1/keys", {"name": "scan-key"}, expect=201)
        key_id = created["key"]["id"]
        minted["virtual key"] = created["secret"]
        vkey = created["secret"]

        # Model calls with the virtual key and with the master key.
        sdk_calls(gw, vkey)
        res = chat(gw, s.master, "env-model", "scan as master")
        assert res.status_code == 200, res.text
        res = chat(gw, s.master, "file-model", "scan as master", stream=True)
        assert res.status_code == 200 and "data: [DONE]" in res.text, res.text
        res = httpx.post(
            f"{gw.base_url}/messages",
            headers={"x-api-key": vkey, "anthropic-version": "2023-06-01"},
            json={"model": "env-model", "max_tokens": 64, "messages": [{"role": "user", "content": "scan messages"}]},
            timeout=TIMEOUT,
        )
        assert res.status_code == 200, res.text

        # Tools: list and call through both upstreams (static header, OAuth), as both principals.
        anyio.run(mcp_calls, gw, vkey)
        anyio.run(mcp_calls, gw, s.master)

        # Agents: the config's agent (header credential) in both protocol versions, the one that
        # refuses the gateway's credential, and an agent registered through the admin API.
        for version in ("0.3", "1.0"):
            res = a2a_send(gw, "echo", vkey, "hello scan", version)
            assert res.status_code == 200 and "echo: hello scan" in res.text, res.text
        card = httpx.get(f"{gw.origin}/a2a/echo/.well-known/agent-card.json", headers=bearer(vkey), timeout=TIMEOUT)
        assert card.status_code == 200, card.text
        refused = a2a_send(gw, "refusing", vkey, "hello scan")
        assert refused.status_code != 200 or "error" in refused.json(), refused.text
        httpx.get(f"{gw.origin}/a2a/refusing/.well-known/agent-card.json", headers=bearer(vkey), timeout=TIMEOUT)
        admin(
            "PUT",
            "/admin/v1/a2a/agents/scan-admin-agent",
            {"url": agent.url, "headers": {"x-agent-credential": s.a2a_admin_header}},
            expect=201,
        )
        res = a2a_send(gw, "scan-admin-agent", vkey, "hello admin agent")
        assert res.status_code == 200 and "echo: hello admin agent" in res.text, res.text
        admin_reads.append(json.dumps(admin("GET", "/admin/v1/a2a/agents")).encode())
        admin_reads.append(json.dumps(admin("GET", "/admin/v1/a2a/agents/scan-admin-agent")).encode())

        # Wrong credentials that contain the real ones, on every layer.
        refused_with_wrong_keys(gw, vkey)
        refused_with_wrong_keys(gw, s.master)
        # A virtual key is not an admin credential.
        res = httpx.get(f"{gw.origin}/admin/v1/keys", headers=bearer(vkey), timeout=TIMEOUT)
        assert res.status_code == 403, res.text

        # Rotate: both secrets work during the grace period; revoke: neither does.
        rotated = admin("POST", f"/admin/v1/keys/{key_id}/rotate", {"grace": "1h"})
        minted["rotated virtual key"] = rotated["secret"]
        for k in (vkey, rotated["secret"]):
            res = chat(gw, k, "env-model", "scan after rotation")
            assert res.status_code == 200, res.text
        refused_with_wrong_keys(gw, rotated["secret"])
        admin("POST", f"/admin/v1/keys/{key_id}/revoke", {})
        for k in (vkey, rotated["secret"]):
            wait_for("the revoked key to be refused", lambda k=k: chat(gw, k, "env-model", "scan revoked").status_code == 401)
        admin("DELETE", "/admin/v1/a2a/agents/scan-admin-agent", expect=204)

        # A config reload (a model added), seen when /v1/models lists it.
        config_path.write_text(
            render(
                s, key_file, db, provider_mock, rec, files, vault, agent,
                extra_models="  - name: reloaded-model\n    targets: [{provider: env-up, model: gpt-upstream}]\n",
            )
        )

        def reloaded() -> bool:
            res = httpx.get(f"{gw.base_url}/models", headers=bearer(s.master), timeout=TIMEOUT)
            return res.status_code == 200 and "reloaded-model" in res.text

        wait_for("the config reload", reloaded)
        res = chat(gw, s.master, "reloaded-model", "scan reloaded")
        assert res.status_code == 200, res.text

        # The last request: once its span has been exported, so have the earlier ones.
        res = chat(gw, s.master, "env-model", "scan final", **{"x-tollgate-conversation-id": MARKER})
        assert res.status_code == 200, res.text
        wanted = [MARKER.encode(), b"execute_tool", b"invoke_agent", b"chat "]
        wait_for(
            "the spans to reach the collector",
            lambda: all(w in rec.otlp_accepted() for w in wanted),
            timeout=30,
        )

        # What the admin API shows to read.
        for path in (
            "/admin/v1/keys",
            f"/admin/v1/keys/{key_id}",
            "/admin/v1/audit?limit=500",
            "/admin/v1/ledger?limit=1000",
            "/admin/v1/mcp/servers",
            "/admin/v1/models/health",
            "/admin/v1/a2a/agents",
            "/admin/v1/audit/verify",
        ):
            res = httpx.get(f"{gw.origin}{path}", headers=bearer(s.master), timeout=TIMEOUT)
            assert res.status_code == 200, f"{path}: {res.status_code} {res.text}"
            admin_reads.append(res.content)
        res = httpx.get(f"{gw.origin}/metrics", headers=bearer(s.master), timeout=TIMEOUT)
        assert res.status_code == 200
        admin_reads.append(res.content)
        res = httpx.get(f"{gw.base_url}/models", headers=bearer(s.master), timeout=TIMEOUT)
        admin_reads.append(res.content)

        # Credentials minted or fetched at run time.
        oauth_stats = httpx.get(f"{vault.base_url}/oauth/stats", timeout=10).json()
        for i, token in enumerate(oauth_stats["issued"]):
            minted[f"MCP OAuth access token #{i}"] = token
        for i, token in enumerate(jwt_tokens(agent)):
            minted[f"identity token minted for the agent #{i}"] = token
        agent_seen = agent.seen()
        provider_seen = httpx.get(f"{provider_mock}/requests", timeout=10).json()

        # Stop the gateway (SIGTERM: drain, flush the ledger and audit), then read everything.
        gw_proc = gw.proc
        assert gw_proc is not None
        gw_proc.send_signal(signal.SIGTERM)
        gw_proc.wait(timeout=30)
        assert gw_proc.returncode == 0, f"tollgate exited with {gw_proc.returncode}"

    # Sinks.
    stdout = "".join(gw.stdout_lines).encode()
    stderr = gw.stderr_path.read_bytes()
    sinks["gateway stdout"] = stdout
    sinks["gateway stderr (logs)"] = stderr
    sinks["OTLP export bodies"] = b"".join(rec.otlp_bodies())
    check = run_check(config_path, check_env(s))
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    sinks["tollgate check output"] = check.stdout + b"\n" + check.stderr
    audit = subprocess.run(
        [str(_binary()), "audit", "--config", str(config_path), "export"],
        capture_output=True,
        timeout=60,
        env=check_env(s),
    )
    assert audit.returncode == 0, audit.stderr.decode()
    sinks["tollgate audit export"] = audit.stdout + b"\n" + audit.stderr
    sinks["admin API answers"] = b"\n".join(admin_reads)
    store = store_files(workdir, skip={config_path, gw.stderr_path})
    sinks.update(store)
    # What upstreams received: the client's credentials must never be forwarded.
    sinks["upstream requests (clients' credentials only)"] = (
        json.dumps(provider_seen).encode()
        + json.dumps(agent_seen).encode()
        + b"".join(json.dumps(x.__dict__, default=lambda b: b.decode("latin-1")).encode() for x in rec.requests("/"))
    )

    # --- not vacuous -----------------------------------------------------------------------------
    # Every configured secret reached its upstream exactly (the file's newlines stripped).
    def headers_seen(records: list[dict], name: str) -> set[str]:
        return {r["headers"].get(name, "") for r in records}

    assert f"Bearer {s.upstream_env}" in headers_seen(provider_seen, "authorization"), "env api_key not sent"
    assert f"Bearer {s.upstream_file}" in headers_seen(provider_seen, "authorization"), (
        "the ${file:...} api_key did not reach the upstream as the file's content without its trailing newlines"
    )
    assert s.upstream_env in headers_seen(provider_seen, "x-api-key"), "anthropic api_key not sent"
    assert s.upstream_env in headers_seen(provider_seen, "x-goog-api-key"), "gemini api_key not sent"
    assert s.aws_token in headers_seen(provider_seen, "x-amz-security-token"), "bedrock session_token not sent"
    assert any(
        a.startswith("AWS4-HMAC-SHA256 Credential=AKIDSCANGATEWAY/") for a in headers_seen(provider_seen, "authorization")
    ), "bedrock requests not signed"
    assert {r.headers.get("authorization") for r in rec.requests("/openai-401/")} == {f"Bearer {s.upstream_env}"}
    assert {r.headers.get("authorization") for r in rec.requests("/openai-500/")} == {f"Bearer {s.upstream_file}"}
    assert {r.headers.get("authorization") for r in rec.requests("/mcp-401/")} == {f"Bearer {s.mcp_header}"}
    assert s.a2a_header in {r.headers.get("x-agent-credential") for r in rec.requests("/a2a-401/")}
    assert {r.headers.get("x-otlp-token") for r in rec.requests("/v1/traces")} == {s.otlp_header}
    assert oauth_stats["tokens_issued"] >= 1 and set(oauth_stats["bearer_seen"]) & {f"Bearer {t}" for t in oauth_stats["issued"]}
    assert oauth_stats["token_requests"] > oauth_stats["tokens_issued"], "the wrong client secret was never refused"
    agent_credentials = headers_seen(agent_seen, "x-agent-credential")
    assert s.a2a_header in agent_credentials and s.a2a_admin_header in agent_credentials, agent_credentials
    assert any(k.startswith("identity token") for k in minted), "the agent saw no minted identity token"

    # The logs are JSON at trace level and hold the traffic's access log.
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    parsed = []
    for line in lines:
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                parsed.append(obj)
    assert len(lines) >= 200 and len(parsed) >= 0.95 * len(lines), (len(lines), len(parsed))
    levels = {str(p.get("level")).upper() for p in parsed}
    assert "TRACE" in levels or "DEBUG" in levels, f"no debug/trace lines: levels {levels}"
    access = [p for p in parsed if p.get("target") == "tollgate::access"]
    statuses = {p.get("status") for p in access}
    assert len(access) >= 50 and {200, 401, 502} <= statuses, (len(access), statuses)
    assert b"tollgate listening on" in stdout
    # The collector got model, tool and agent spans; the check printed a normalised config.
    assert len(rec.otlp_bodies()) >= 2 and len(sinks["OTLP export bodies"]) > 2000
    assert b"<redacted>" in check.stdout and b"env-up" in check.stdout, check.stdout.decode()
    assert b"key.rotate" in audit.stdout and b"key.revoke" in audit.stdout
    db_files = [name for name in store if "tollgate.db" in name]
    assert any(name.endswith("tollgate.db") for name in db_files) and sum(len(store[n]) for n in db_files) > 8192, db_files

    # --- the scan --------------------------------------------------------------------------------
    client_credentials = {"master key": s.master, **{k: v for k, v in minted.items() if "virtual key" in k}}
    upstream_sink = "upstream requests"
    needles = [
        needle("master key", s.master),
        needle("env provider api_key (${UPSTREAM_KEY})", s.upstream_env, allowed_in=(upstream_sink,)),
        needle("file provider api_key (${file:...})", s.upstream_file, allowed_in=(upstream_sink,)),
        needle("MCP upstream Authorization header", s.mcp_header, allowed_in=(upstream_sink,)),
        needle("MCP upstream OAuth client_secret", s.mcp_oauth, allowed_in=(upstream_sink,)),
        # client_secret_basic: base64(urlencode(id):urlencode(secret)), as the gateway sends it.
        needle("MCP upstream OAuth client_secret (refused)", s.mcp_oauth_wrong),
        Needle(
            "MCP OAuth client_secret_basic credential (refused)",
            base64.b64encode(f"{quote_plus(OAUTH_CLIENT_ID)}:{quote_plus(s.mcp_oauth_wrong)}".encode()).decode(),
            "",
        ),
        Needle(
            "MCP OAuth client_secret_basic credential",
            base64.b64encode(f"{quote_plus(OAUTH_CLIENT_ID)}:{quote_plus(s.mcp_oauth)}".encode()).decode(),
            "",
            allowed_in=(upstream_sink,),
        ),
        needle("A2A agent header credential", s.a2a_header, allowed_in=(upstream_sink,)),
        # An admin-registered agent's credential must be kept in the store to be sent.
        needle("admin-registered A2A agent header credential", s.a2a_admin_header, allowed_in=(upstream_sink, "file ")),
        needle("OTLP header", s.otlp_header, allowed_in=(upstream_sink,)),
        needle("bedrock secret_access_key (${SCAN_AWS_SECRET})", s.aws_secret),
        needle("bedrock session_token", s.aws_token, allowed_in=(upstream_sink,)),
        needle("stdio MCP server env value", s.stdio_env),
    ]
    for name, value in minted.items():
        if name in client_credentials:
            needles.append(needle(name, value))
        elif name.startswith("identity token"):
            # A JWT: its header is the same in every token the gateway signs; the signature is not.
            needles.append(needle(name, value, allowed_in=(upstream_sink,), random_part=value.rsplit(".", 1)[1]))
        else:
            needles.append(needle(name, value, allowed_in=(upstream_sink,), random_part=value))
    leaks = scan(sinks, needles)
    assert not leaks, f"{len(leaks)} secret leak(s):\n" + "\n".join(str(leak) for leak in leaks)



# --- configs tollgate check rejects --------------------------------------------------------------

CHECK_BASE = """\
listen: 127.0.0.1:0
master_key: {master}
storage:
  database_url: sqlite://{db}
telemetry:
  otlp:
    endpoint: http://127.0.0.1:9
{otlp_headers}
providers:
  - name: env-up
{env_provider}
  - name: file-up
    kind: openai
    base_url: http://127.0.0.1:9/v1
    api_key: ${{file:{key_file}}}
  - name: bedrock-up
    kind: bedrock
    region: us-east-1
    access_key_id: AKIDSCANGATEWAY
    secret_access_key: ${{SCAN_AWS_SECRET}}
    session_token: {aws_token}
models:
  - name: m
    targets: [{{provider: file-up}}]
mcp:
  servers:
    - name: files
      url: http://127.0.0.1:9/mcp
{mcp_headers}
    - name: vault
      url: http://127.0.0.1:9/mcp
      oauth:
        token_url: http://127.0.0.1:9/token
        client_id: scan
        client_secret: ${{MCP_OAUTH_SECRET}}
    - name: local
      command: /bin/true
{stdio_env}
a2a:
  agents:
    - name: echo
      url: http://127.0.0.1:9
{a2a_headers}
"""

GOOD_PARTS = {
    "otlp_headers": "    headers: {{x-otlp-token: {otlp}}}",
    "env_provider": "    kind: openai\n    base_url: http://127.0.0.1:9/v1\n    api_key: ${{UPSTREAM_KEY}}",
    "mcp_headers": '      headers: {{Authorization: "Bearer {mcp}"}}',
    "a2a_headers": "      headers: {{x-agent-credential: {a2a}}}",
    "stdio_env": "      env: {{SCAN_STDIO_TOKEN: {stdio}}}",
}

# Each case replaces one part with a mistake an operator could make; `where` is a fragment the
# error output must contain, so the case is known to fail for the intended reason.
BAD_CONFIGS = {
    "unknown field beside an api_key": (
        "env_provider",
        "    kind: openai\n    base_url: http://127.0.0.1:9/v1\n    api_key: ${{UPSTREAM_KEY}}\n    colour: red",
        "colour",
    ),
    "api_key on a mock provider": ("env_provider", "    kind: mock\n    api_key: ${{UPSTREAM_KEY}}", "providers[0]"),
    "MCP headers written as one string": ("mcp_headers", '      headers: "Authorization: Bearer {mcp}"', "headers"),
    "A2A headers written as a list": ("a2a_headers", '      headers: ["x-agent-credential: {a2a}"]', "headers"),
    "OTLP headers in OTEL_EXPORTER_OTLP_HEADERS form": ("otlp_headers", '    headers: "x-otlp-token={otlp}"', "headers"),
    "stdio env in KEY=VALUE list form": ("stdio_env", '      env: ["SCAN_STDIO_TOKEN={stdio}"]', "env"),
}


def check_config(s: Secrets, key_file: Path, db: Path, replace: tuple[str, str] | None = None) -> str:
    parts = dict(GOOD_PARTS)
    if replace is not None:
        parts[replace[0]] = replace[1]
    values = {"otlp": s.otlp_header, "mcp": s.mcp_header, "a2a": s.a2a_header, "stdio": s.stdio_env}
    filled = {k: v.format(**values) for k, v in parts.items()}
    return CHECK_BASE.format(master=s.master, db=db, key_file=key_file, aws_token=s.aws_token, **filled)


def config_needles(s: Secrets) -> list[Needle]:
    return [
        needle("master key", s.master),
        needle("env provider api_key (${UPSTREAM_KEY})", s.upstream_env),
        needle("file provider api_key (${file:...})", s.upstream_file),
        needle("MCP upstream Authorization header", s.mcp_header),
        needle("MCP upstream OAuth client_secret", s.mcp_oauth),
        needle("A2A agent header credential", s.a2a_header),
        needle("OTLP header", s.otlp_header),
        needle("bedrock secret_access_key (${SCAN_AWS_SECRET})", s.aws_secret),
        needle("bedrock session_token", s.aws_token),
        needle("stdio MCP server env value", s.stdio_env),
    ]


@pytest.mark.parametrize("case", [None, *BAD_CONFIGS], ids=["valid", *BAD_CONFIGS])
def test_rejected_configs_do_not_echo_secrets(tmp_path: Path, scan_env: Secrets, case: str | None) -> None:
    s = scan_env
    key_file = tmp_path / "upstream-key.txt"
    key_file.write_text(s.upstream_file + "\n")
    config = tmp_path / "tollgate.yaml"
    replace = None if case is None else BAD_CONFIGS[case][:2]
    config.write_text(check_config(s, key_file, tmp_path / "tollgate.db", replace))
    out = run_check(config, check_env(s))
    output = out.stdout + b"\n" + out.stderr
    if case is None:
        assert out.returncode == 0, output.decode()
        assert b"<redacted>" in out.stdout, output.decode()
    else:
        assert out.returncode == 1, f"tollgate check accepted it (exit {out.returncode}):\n{output.decode()}"
        assert BAD_CONFIGS[case][2].encode() in output, output.decode()
    leaks = scan({"tollgate check output": output}, config_needles(s))
    assert not leaks, f"{len(leaks)} secret leak(s):\n" + "\n".join(str(leak) for leak in leaks)


def served(config: str) -> str:
    """A check config made ready to serve: JSON logs at trace level, reloads seen quickly."""
    return config.replace(
        "listen: 127.0.0.1:0\n",
        "listen: 127.0.0.1:0\nlogging: {level: trace, format: json}\nreload: {interval: 100ms}\n",
        1,
    )


def test_rejected_reload_does_not_log_or_audit_secrets(tmp_path: Path, scan_env: Secrets) -> None:
    """The same mistakes made in a running gateway's config file: each reload is rejected (and
    logged, and audited as `config.reload` with outcome `failure`); neither the log, the audit
    chain nor the store may hold a secret."""
    s = scan_env
    key_file = tmp_path / "upstream-key.txt"
    key_file.write_text(s.upstream_file + "\n")
    workdir = tmp_path / "gw"
    workdir.mkdir()
    db = workdir / "data" / "tollgate.db"
    with launch_gateway(workdir, served(check_config(s, key_file, db))) as gw:
        gw.master_key = s.master

        def reload_failures() -> int:
            res = httpx.get(
                f"{gw.origin}/admin/v1/audit?action=config.reload&limit=500", headers=bearer(s.master), timeout=TIMEOUT
            )
            assert res.status_code == 200, res.text
            return sum(1 for r in res.json()["data"] if r["outcome"] == "failure")

        for i, case in enumerate(BAD_CONFIGS, start=1):
            gw.config_path.write_text(served(check_config(s, key_file, db, BAD_CONFIGS[case][:2])))
            wait_for(f"the rejected reload of {case!r} to be audited", lambda i=i: reload_failures() >= i)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(timeout=30)
        assert gw.proc.returncode == 0, f"tollgate exited with {gw.proc.returncode}"

    stderr = gw.stderr_path.read_bytes()
    assert stderr.count(b"config reload rejected") >= len(BAD_CONFIGS), stderr.decode()[-3000:]
    good = tmp_path / "good.yaml"
    good.write_text(check_config(s, key_file, db))
    audit = subprocess.run(
        [str(_binary()), "audit", "--config", str(good), "export"], capture_output=True, timeout=60, env=check_env(s)
    )
    assert audit.returncode == 0, audit.stderr.decode()
    assert audit.stdout.count(b'"config.reload"') >= len(BAD_CONFIGS), audit.stdout.decode()
    sinks = {"gateway stderr (logs)": stderr, "tollgate audit export": audit.stdout + b"\n" + audit.stderr}
    sinks.update(store_files(workdir, skip={gw.config_path, gw.stderr_path}))
    leaks = scan(sinks, config_needles(s))
    assert not leaks, f"{len(leaks)} secret leak(s):\n" + "\n".join(str(leak) for leak in leaks)
