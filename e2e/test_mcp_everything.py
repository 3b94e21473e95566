"""The MCP reference server, end to end: `@modelcontextprotocol/server-everything` (Node, pinned in
e2e/node/package.json) runs as a Streamable HTTP upstream and as a stdio upstream of tollgate, and
the official MCP Python SDK (`mcp` 2.x) drives it through the gateway: tools, progress, sampling
and elicitation round trips (the SDK client answers them), resources, resource templates and
prompts, once per transport, then both federated behind `/mcp`.

Needs the npm pins: `npm ci --prefix e2e/node`. Without e2e/node/node_modules the module is skipped.

The HTTP upstream is `node --import e2e/node/loopback-listen.mjs <server-everything> streamableHttp`
with PORT=0: the preload makes the server bind 127.0.0.1 on an OS-chosen port and print it, which
is what the fixture waits for. The stdio upstream is spawned by tollgate from config (node, the
package's entry script and `stdio`) with an explicit environment.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import CONFIG_HEAD, MASTER_KEY, Gateway, launch_gateway, new_key
from mcp.client.session import ClientRequestContext
from mcp.types import (
    BlobResourceContents,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestParams,
    ElicitResult,
    EmbeddedResource,
    ImageContent,
    TextContent,
    TextResourceContents,
)
from mcp_client_util import connect, elicitation_reply, sampling_reply, text_of

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_MODULES = NODE_DIR / "node_modules"
EVERYTHING = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
# The `node` npm package (pinned Node 22) installs its binary here; the machine's node otherwise.
PINNED_NODE = NODE_MODULES / "node" / "bin" / "node"
LOOPBACK_PRELOAD = NODE_DIR / "loopback-listen.mjs"

STARTUP_TIMEOUT = 30.0
LISTENING_RE = re.compile(r"^loopback-listen: listening on 127\.0\.0\.1:(\d+)\s*$")

pytestmark = [
    pytest.mark.anyio,
    # CI (TOLLGATE_REQUIRE_SERVICES) installs the pins, so there a missing one is a failure.
    pytest.mark.skipif(
        not EVERYTHING.is_file() and not os.environ.get("TOLLGATE_REQUIRE_SERVICES"),
        reason=f"npm pins not installed ({EVERYTHING.relative_to(NODE_DIR.parent.parent)} missing): "
        "run `npm ci --prefix e2e/node`",
    ),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def node_binary() -> str:
    if PINNED_NODE.is_file() and os.access(PINNED_NODE, os.X_OK):
        return str(PINNED_NODE)
    found = shutil.which("node")
    if found is None:
        pytest.skip("no node: neither e2e/node's pinned one nor one on PATH")
    return found


# Every tool server-everything registers for a client that can answer sampling and elicitation
# (the conditional ones are registered after `initialize`, from the client's capabilities).
ALWAYS_TOOLS = {
    "echo",
    "get-annotated-message",
    "get-env",
    "get-resource-links",
    "get-resource-reference",
    "get-structured-content",
    "get-sum",
    "get-tiny-image",
    "gzip-file-as-resource",
    "toggle-simulated-logging",
    "toggle-subscriber-updates",
    "trigger-long-running-operation",
}
SAMPLING_TOOL = "trigger-sampling-request"
ELICITATION_TOOL = "trigger-elicitation-request"
PROMPTS = {"simple-prompt", "args-prompt", "completable-prompt", "resource-prompt"}
STATIC_DOCS = {
    "architecture.md",
    "extension.md",
    "features.md",
    "how-it-works.md",
    "instructions.md",
    "startup.md",
    "structure.md",
}
TEMPLATES = {
    "demo://resource/dynamic/text/{resourceId}",
    "demo://resource/dynamic/blob/{resourceId}",
}


# --- The Streamable HTTP upstream ----------------------------------------------------------------


@dataclass
class NodeServer:
    proc: subprocess.Popen[str]
    port: int
    stderr_lines: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def everything_over_http(marker: str) -> Iterator[NodeServer]:
    """server-everything in streamableHttp mode on 127.0.0.1, an OS-chosen port, until exit.

    `marker` is put in its environment as E2E_MARKER, so get-env tells which upstream answered.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "PORT": "0",
        "E2E_MARKER": marker,
    }
    proc = subprocess.Popen(
        [node_binary(), "--import", LOOPBACK_PRELOAD.as_uri(), str(EVERYTHING), "streamableHttp"],
        cwd=NODE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        # Its per-request log goes to stdout: nothing reads it.
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    lines: list[str] = []
    line_queue: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            line_queue.put(line)
        line_queue.put(None)

    reader = threading.Thread(target=pump, name="everything-http-stderr", daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        port = None
        while port is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"server-everything did not listen within {STARTUP_TIMEOUT:.0f}s:\n{''.join(lines)}")
            try:
                line = line_queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                proc.wait(timeout=10)
                pytest.fail(f"server-everything exited ({proc.returncode}) before listening:\n{''.join(lines)}")
            match = LISTENING_RE.match(line.strip())
            if match:
                port = int(match.group(1))
        yield NodeServer(proc=proc, port=port, stderr_lines=lines)
    finally:
        _stop(proc)
        reader.join(timeout=10)


# --- The gateway -----------------------------------------------------------------------------------

CONFIG = CONFIG_HEAD + """\
logging:
  level: warn
mcp:
  prefix: conditional
  servers:
    - name: http
      url: {http_url}
    - name: stdio
      command: {node}
      args: [{entry}, stdio]
      cwd: {cwd}
      env: {{E2E_MARKER: stdio-upstream}}
  virtual_servers:
    - name: everything-http
      servers: [http]
    - name: everything-stdio
      servers: [stdio]
"""

# Set in the gateway's own environment: an explicit-environment stdio child must not see it.
CANARY = "TOLLGATE_E2E_LEAK_CANARY"


@dataclass
class Setup:
    gateway: Gateway
    http: NodeServer
    key: str

    def url(self, path: str) -> str:
        return f"{self.gateway.origin}{path}"

    def logs(self) -> str:
        return self.gateway.logs() + "--- server-everything (http) stderr ---\n" + "".join(self.http.stderr_lines)


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("tollgate-everything")
    with everything_over_http("http-upstream") as http:
        config = CONFIG.format(
            master=MASTER_KEY,
            db=workdir / "tollgate.db",
            http_url=http.url,
            node=json.dumps(node_binary()),
            entry=json.dumps(str(EVERYTHING)),
            cwd=json.dumps(str(NODE_DIR)),
        )
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(CANARY, "leaked")
            with launch_gateway(workdir, config) as gw:
                yield Setup(gateway=gw, http=http, key=new_key(gw)["secret"])


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


TRANSPORTS = pytest.mark.parametrize("path", ["/mcp/everything-http", "/mcp/everything-stdio"], ids=["http", "stdio"])


# --- Per transport -------------------------------------------------------------------------------


@TRANSPORTS
async def test_tools_list_and_call(everything: Setup, path: str) -> None:
    async with connect(
        everything.url(path),
        auth(everything.key),
        sampling=sampling_reply("unused"),
        elicitation=elicitation_reply("decline"),
    ) as client:
        assert client.server_info is not None and client.server_info.name == f"tollgate/{path.rsplit('/', 1)[1]}"
        tools = {t.name: t for t in (await client.list_tools()).tools}
        missing = (ALWAYS_TOOLS | {SAMPLING_TOOL, ELICITATION_TOOL}) - set(tools)
        assert not missing, (missing, sorted(tools), everything.logs())
        # One server behind the path: nothing collides, nothing is prefixed.
        assert not any(name.startswith(("http_", "stdio_")) for name in tools)
        assert tools["get-sum"].input_schema["required"] == ["a", "b"]
        assert tools["get-structured-content"].output_schema is not None

        assert text_of(await client.call_tool("echo", {"message": "hello through tollgate"})) == (
            "Echo: hello through tollgate"
        )
        assert text_of(await client.call_tool("get-sum", {"a": 2, "b": 40})) == "The sum of 2 and 40 is 42."

        weather = await client.call_tool("get-structured-content", {"location": "Chicago"})
        assert not weather.is_error
        assert weather.structured_content == {"temperature": 36, "conditions": "Light rain / drizzle", "humidity": 82}

        image = await client.call_tool("get-tiny-image", {})
        kinds = [type(block) for block in image.content]
        assert kinds == [TextContent, ImageContent, TextContent], image.content
        png = image.content[1]
        assert png.mime_type == "image/png" and base64.b64decode(png.data).startswith(b"\x89PNG")

        # A tool's own failure stays a tool result (isError), not a transport error.
        bad = await client.session.call_tool("get-sum", {"a": "two", "b": 40})
        assert bad.is_error


@TRANSPORTS
async def test_conditional_tools_follow_the_clients_capabilities(everything: Setup, path: str) -> None:
    """The gateway initializes the upstream with the client's capabilities: a client that cannot
    answer sampling or elicitation is not offered the tools that would ask it to."""
    async with connect(everything.url(path), auth(everything.key)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert ALWAYS_TOOLS <= names, sorted(names)
        assert SAMPLING_TOOL not in names and ELICITATION_TOOL not in names, sorted(names)


@TRANSPORTS
async def test_progress_notifications(everything: Setup, path: str) -> None:
    async with connect(everything.url(path), auth(everything.key)) as client:
        seen: list[tuple[float, float | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total))

        result = await client.call_tool(
            "trigger-long-running-operation", {"duration": 0.6, "steps": 3}, progress_callback=on_progress
        )
        assert text_of(result) == "Long running operation completed. Duration: 0.6 seconds, Steps: 3."
        assert seen == [(1, 3), (2, 3), (3, 3)], (seen, everything.logs())


@TRANSPORTS
async def test_sampling_round_trip(everything: Setup, path: str) -> None:
    asked: list[CreateMessageRequestParams] = []

    async def sampling(context: ClientRequestContext, params: CreateMessageRequestParams) -> CreateMessageResult:
        asked.append(params)
        return CreateMessageResult(
            role="assistant",
            content=TextContent(type="text", text="canned reply from the e2e client"),
            model="e2e-model",
            stop_reason="endTurn",
        )

    async with connect(everything.url(path), auth(everything.key), sampling=sampling) as client:
        result = await client.call_tool(SAMPLING_TOOL, {"prompt": "what is a gateway?", "maxTokens": 32})
        assert not result.is_error, text_of(result)
        text = text_of(result)
        assert text.startswith("LLM sampling result:"), text
        # The upstream got the client's answer back, whole.
        answer = json.loads(text.split(":", 1)[1])
        assert answer == {
            "model": "e2e-model",
            "stopReason": "endTurn",
            "role": "assistant",
            "content": {"type": "text", "text": "canned reply from the e2e client"},
        }
    # And the client got the upstream's request, whole.
    assert len(asked) == 1
    request = asked[0]
    assert request.max_tokens == 32 and request.system_prompt == "You are a helpful test server."
    assert request.messages[0].role == "user"
    assert request.messages[0].content.text == f"Resource {SAMPLING_TOOL} context: what is a gateway?"


@TRANSPORTS
async def test_elicitation_round_trip(everything: Setup, path: str) -> None:
    asked: list[ElicitRequestParams] = []

    async def elicitation(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params)
        return ElicitResult(
            action="accept",
            content={"name": "Ada Lovelace", "check": True, "email": "ada@example.com", "integer": 7},
        )

    async with connect(everything.url(path), auth(everything.key), elicitation=elicitation) as client:
        result = await client.call_tool(ELICITATION_TOOL, {})
        text = text_of(result)
        assert not result.is_error, text
        assert "User provided the requested information!" in text
        for line in ("- Name: Ada Lovelace", "- Agreed to terms: true", "- Email: ada@example.com", "- Favorite Integer: 7"):
            assert line in text, text
    assert len(asked) == 1
    schema = asked[0].requested_schema
    assert asked[0].message == "Please provide inputs for the following fields:"
    assert schema["required"] == ["name"] and {"name", "check", "email", "integer"} <= set(schema["properties"])

    # Declining is relayed too.
    async with connect(everything.url(path), auth(everything.key), elicitation=elicitation_reply("decline")) as client:
        declined = text_of(await client.call_tool(ELICITATION_TOOL, {}))
        assert "User declined to provide the requested information." in declined, declined


@TRANSPORTS
async def test_resources_and_templates(everything: Setup, path: str) -> None:
    async with connect(everything.url(path), auth(everything.key)) as client:
        listed = {str(r.uri): r for r in (await client.list_resources()).resources}
        assert set(listed) == {f"demo://resource/static/document/{name}" for name in STATIC_DOCS}, sorted(listed)
        features_uri = "demo://resource/static/document/features.md"
        assert listed[features_uri].name == "features.md" and listed[features_uri].mime_type == "text/markdown"

        features = (await client.read_resource(features_uri)).contents
        assert len(features) == 1 and isinstance(features[0], TextResourceContents)
        assert features[0].mime_type == "text/markdown"
        assert features[0].text.startswith("# Everything Server - Features")

        templates = {t.uri_template: t for t in (await client.list_resource_templates()).resource_templates}
        assert set(templates) == TEMPLATES, sorted(templates)
        assert templates["demo://resource/dynamic/text/{resourceId}"].name == "Dynamic Text Resource"

        # URIs in no list are routed by template.
        text = (await client.read_resource("demo://resource/dynamic/text/7")).contents
        assert isinstance(text[0], TextResourceContents) and str(text[0].uri) == "demo://resource/dynamic/text/7"
        assert text[0].text.startswith("Resource 7: This is a plaintext resource created at ")
        blob = (await client.read_resource("demo://resource/dynamic/blob/3")).contents
        assert isinstance(blob[0], BlobResourceContents)
        assert base64.b64decode(blob[0].blob).decode().startswith("Resource 3: This is a base64 blob created at ")


@TRANSPORTS
async def test_prompts(everything: Setup, path: str) -> None:
    async with connect(everything.url(path), auth(everything.key)) as client:
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        assert set(prompts) == PROMPTS, sorted(prompts)
        args = {a.name: a.required for a in prompts["args-prompt"].arguments or []}
        assert args == {"city": True, "state": False}

        simple = await client.get_prompt("simple-prompt")
        assert [m.content.text for m in simple.messages] == ["This is a simple prompt without arguments."]
        weather = await client.get_prompt("args-prompt", {"city": "Paris", "state": "TX"})
        assert weather.messages[0].role == "user" and weather.messages[0].content.text == "What's weather in Paris, TX?"

        embedded = await client.get_prompt("resource-prompt", {"resourceType": "Text", "resourceId": "2"})
        assert len(embedded.messages) == 2
        assert embedded.messages[0].content.text.startswith("This prompt includes the Text resource with id: 2.")
        resource = embedded.messages[1].content
        assert isinstance(resource, EmbeddedResource)
        assert str(resource.resource.uri) == "demo://resource/dynamic/text/2"
        assert resource.resource.text.startswith("Resource 2: This is a plaintext resource")


# --- Both behind /mcp ----------------------------------------------------------------------------


def env_of(result: Any) -> dict[str, str]:
    assert not result.is_error, text_of(result)
    return json.loads(text_of(result))


async def test_both_transports_federated(everything: Setup) -> None:
    async with connect(
        everything.url("/mcp"),
        auth(everything.key),
        sampling=sampling_reply("federated sample"),
        elicitation=elicitation_reply("decline"),
    ) as client:
        assert client.server_info is not None and client.server_info.name == "tollgate"
        names = {t.name for t in (await client.list_tools()).tools}
        # The two servers publish the same names: every one is prefixed with its server's.
        for tool in ALWAYS_TOOLS | {SAMPLING_TOOL, ELICITATION_TOOL}:
            assert {f"http_{tool}", f"stdio_{tool}"} <= names, (tool, sorted(names))
            assert tool not in names
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert {f"{server}_{prompt}" for server in ("http", "stdio") for prompt in PROMPTS} <= prompts, sorted(prompts)

        # Each call reaches its owner; get-env tells which process answered.
        http_env = env_of(await client.call_tool("http_get-env", {}))
        stdio_env = env_of(await client.call_tool("stdio_get-env", {}))
        assert http_env["E2E_MARKER"] == "http-upstream"
        assert stdio_env["E2E_MARKER"] == "stdio-upstream"
        # The stdio child got the configured environment and PATH/HOME, nothing of the gateway's.
        assert CANARY not in stdio_env
        assert set(stdio_env) <= {"E2E_MARKER", "PATH", "HOME"}, sorted(stdio_env)

        for server in ("http", "stdio"):
            sampled = text_of(await client.call_tool(f"{server}_{SAMPLING_TOOL}", {"prompt": "hi"}))
            assert "federated sample" in sampled, (server, sampled)
            summed = text_of(await client.call_tool(f"{server}_get-sum", {"a": 1, "b": 2}))
            assert summed == "The sum of 1 and 2 is 3.", server
            prompt = await client.get_prompt(f"{server}_args-prompt", {"city": "Oslo"})
            assert prompt.messages[0].content.text == "What's weather in Oslo?", server

        # Both publish the same resources: one copy each, served by the first in config order.
        uris = [str(r.uri) for r in (await client.list_resources()).resources]
        assert sorted(uris) == sorted(f"demo://resource/static/document/{name}" for name in STATIC_DOCS), uris
        doc = (await client.read_resource("demo://resource/static/document/startup.md")).contents
        assert doc[0].text.startswith("# Everything Server - Startup Process")
