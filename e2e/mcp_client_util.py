"""MCP client helpers for the end-to-end tests, on the official Python SDK (`mcp` 2.x).

Two halves:

* Connecting: `connect(url, headers=...)` (streamable HTTP), `connect_sse(url, headers=...)` and
  `connect_stdio(args)` are async context managers that yield an initialized `mcp.Client`
  (`client.session` is the underlying `ClientSession` for raw access). The gateway tests use
  `connect(f"{gateway}/mcp", headers={"Authorization": f"Bearer {key}"})`.
* Upstreams: `start_upstream(...)` runs `e2e/mcp_upstream.py` as a subprocess on a free port and
  waits until it accepts connections.

Protocol era: the SDK's default `mode="auto"` first probes `server/discover` (the 2026-07-28
stateless protocol) and falls back to the `initialize` handshake on any JSON-RPC error. These
helpers default to `mode="legacy"`, which skips the probe and sends `initialize` (protocol
2025-11-25) straight away, so they work against a handshake-only server such as the gateway.
Pass `mode="auto"` to exercise the probe-and-fallback path instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx2  # the SDK's HTTP client (a fork of httpx), pulled in by `mcp`
from mcp import Client, StdioServerParameters
from mcp.client.session import ClientRequestContext, ElicitationFnT, LoggingFnT, SamplingFnT
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import (
    CallToolResult,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestParams,
    ElicitResult,
    TextContent,
)

UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "mcp_upstream.py"

Mode = Literal["legacy", "auto"]
"""`legacy`: initialize handshake only. `auto`: server/discover probe, then initialize on error."""

DEFAULT_TIMEOUT = 30.0
"""Seconds per request (and for HTTP connect/write); SSE reads may idle longer (see below)."""

_SSE_READ_TIMEOUT = 300.0


# --- Callbacks ---------------------------------------------------------------------------------


def sampling_reply(text: str, model: str = "e2e-model") -> SamplingFnT:
    """A sampling callback that answers every `sampling/createMessage` with `text`."""

    async def callback(context: ClientRequestContext, params: CreateMessageRequestParams) -> CreateMessageResult:
        return CreateMessageResult(
            role="assistant",
            content=TextContent(type="text", text=text),
            model=model,
            stop_reason="endTurn",
        )

    return callback


def elicitation_reply(
    action: Literal["accept", "decline", "cancel"] = "accept", content: Mapping[str, Any] | None = None
) -> ElicitationFnT:
    """An elicitation callback that answers every `elicitation/create` the same way."""

    async def callback(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        return ElicitResult(action=action, content=dict(content) if content is not None else None)

    return callback


# --- Connecting --------------------------------------------------------------------------------


def _client(
    server: Any,
    *,
    mode: Mode,
    sampling: SamplingFnT | None,
    elicitation: ElicitationFnT | None,
    logging: LoggingFnT | None,
    timeout: float,
) -> Client:
    return Client(
        server,
        mode=mode,
        # Every call should reach the wire: the gateway is what is under test, not a client cache.
        cache=None,
        read_timeout_seconds=timeout,
        # The capabilities the client declares follow from these: sampling/elicitation are only
        # advertised when a callback is given.
        sampling_callback=sampling,
        elicitation_callback=elicitation,
        logging_callback=logging,
    )


@asynccontextmanager
async def connect(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    sampling: SamplingFnT | None = None,
    elicitation: ElicitationFnT | None = None,
    logging: LoggingFnT | None = None,
    mode: Mode = "legacy",
    timeout: float = DEFAULT_TIMEOUT,
) -> AsyncIterator[Client]:
    """Connect over streamable HTTP to `url` (e.g. `http://127.0.0.1:PORT/mcp`) and initialize.

    `headers` go on every HTTP request of the connection (POSTs, the GET stream and the closing
    DELETE), e.g. `{"Authorization": "Bearer <key>"}`. The SDK adds `Mcp-Session-Id` (once the
    server has assigned one) and `Mcp-Protocol-Version` itself.
    """
    async with AsyncExitStack() as stack:
        # The SDK's streamable HTTP transport takes headers only via a caller-built httpx2 client,
        # and leaves that client's lifetime to the caller; the exit stack closes it after the MCP
        # client (LIFO), i.e. after the session's DELETE has been sent.
        http = await stack.enter_async_context(
            httpx2.AsyncClient(
                headers=dict(headers or {}),
                timeout=httpx2.Timeout(timeout, read=_SSE_READ_TIMEOUT),
            )
        )
        transport = streamable_http_client(url, http_client=http)
        client = _client(
            transport, mode=mode, sampling=sampling, elicitation=elicitation, logging=logging, timeout=timeout
        )
        yield await stack.enter_async_context(client)


@asynccontextmanager
async def connect_sse(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    sampling: SamplingFnT | None = None,
    elicitation: ElicitationFnT | None = None,
    logging: LoggingFnT | None = None,
    mode: Mode = "legacy",
    timeout: float = DEFAULT_TIMEOUT,
) -> AsyncIterator[Client]:
    """Connect over the legacy HTTP+SSE transport to `url` (e.g. `http://127.0.0.1:PORT/sse`)."""
    transport = sse_client(url, headers=dict(headers or {}), timeout=timeout, sse_read_timeout=_SSE_READ_TIMEOUT)
    client = _client(transport, mode=mode, sampling=sampling, elicitation=elicitation, logging=logging, timeout=timeout)
    async with client:
        yield client


@asynccontextmanager
async def connect_stdio(
    args: list[str],
    *,
    command: str = sys.executable,
    env: Mapping[str, str] | None = None,
    sampling: SamplingFnT | None = None,
    elicitation: ElicitationFnT | None = None,
    logging: LoggingFnT | None = None,
    mode: Mode = "legacy",
    timeout: float = DEFAULT_TIMEOUT,
) -> AsyncIterator[Client]:
    """Spawn `command args...` (default: this Python) and talk MCP over its stdin/stdout.

    `env` is merged over the SDK's default (minimal) environment for the child.
    """
    params = StdioServerParameters(command=command, args=list(args), env=dict(env) if env else None)
    client = _client(params, mode=mode, sampling=sampling, elicitation=elicitation, logging=logging, timeout=timeout)
    async with client:
        yield client


def text_of(result: CallToolResult) -> str:
    """The concatenated text blocks of a tool result."""
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


# --- Upstream processes ------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def upstream_args(
    transport: Literal["stdio", "sse", "streamable-http"] = "stdio",
    *,
    port: int | None = None,
    name: str = "upstream",
    variant: Literal["a", "b"] = "a",
) -> list[str]:
    """The command line (after the interpreter) of `mcp_upstream.py`."""
    args = [str(UPSTREAM_SCRIPT), "--transport", transport, "--name", name, "--variant", variant]
    if port is not None:
        args += ["--port", str(port)]
    return args


@dataclass
class Upstream:
    """A running `mcp_upstream.py` HTTP server."""

    proc: subprocess.Popen[bytes]
    port: int
    name: str
    transport: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The MCP endpoint: `/mcp` for streamable HTTP, `/sse` for SSE."""
        return f"{self.base_url}/mcp" if self.transport == "streamable-http" else f"{self.base_url}/sse"


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    """Poll until 127.0.0.1:`port` accepts a TCP connection (uvicorn is serving by then)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mcp_upstream.py exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"mcp_upstream.py did not listen on {port} within {timeout}s") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def start_upstream(
    transport: Literal["sse", "streamable-http"] = "streamable-http",
    *,
    name: str = "upstream",
    variant: Literal["a", "b"] = "a",
    port: int | None = None,
    startup_timeout: float = 20.0,
    extra_args: list[str] | None = None,
) -> Iterator[Upstream]:
    """Run `mcp_upstream.py` over HTTP on `port` (default: a free one) until the block exits.

    `extra_args` go after the standard ones, e.g. `["--oauth", "id:secret"]`. Its stderr is
    inherited, so a crash shows in pytest's captured output.
    """
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, *upstream_args(transport, port=port, name=name, variant=variant), *(extra_args or [])],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_listening(proc, port, startup_timeout)
        yield Upstream(proc=proc, port=port, name=name, transport=transport)
    finally:
        _stop(proc)
