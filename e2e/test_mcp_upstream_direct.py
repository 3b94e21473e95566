"""The MCP test upstream (`mcp_upstream.py`) talked to directly with the official Python SDK, no
gateway in between: proves the fixture server and the client helpers before the gateway tests
rely on them. Needs no tollgate binary (uses none of conftest's fixtures)."""

from __future__ import annotations

import pytest
from mcp import Client, MCPError
from mcp.types import MISSING_REQUIRED_CLIENT_CAPABILITY, TextContent, TextResourceContents
from mcp.types.version import LATEST_HANDSHAKE_VERSION, LATEST_MODERN_VERSION
from mcp_client_util import (
    connect,
    connect_sse,
    connect_stdio,
    elicitation_reply,
    sampling_reply,
    start_upstream,
    text_of,
    upstream_args,
)

pytestmark = pytest.mark.anyio

TOOLS_A = {"echo", "add", "read_file", "pay", "slow_count", "ask_llm", "confirm", "whoami"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def upstream_a():
    with start_upstream("streamable-http", name="up-a") as up:
        yield up


@pytest.fixture(scope="module")
def upstream_b():
    with start_upstream("streamable-http", name="up-b", variant="b") as up:
        yield up


async def check_basics(client: Client, name: str) -> None:
    """Tools, resources and prompts of a variant "a" upstream called `name`."""
    assert client.server_info is not None and client.server_info.name == name

    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS_A
    assert tools["pay"].annotations is not None and tools["pay"].annotations.destructive_hint is True
    assert tools["echo"].input_schema["required"] == ["text"]

    assert text_of(await client.call_tool("echo", {"text": "hi there"})) == "hi there"
    added = await client.call_tool("add", {"a": 2, "b": 40})
    assert text_of(added) == "42" and added.structured_content == {"result": 42}
    assert text_of(await client.call_tool("read_file", {"path": "/etc/passwd"})) == "contents of /etc/passwd"
    assert text_of(await client.call_tool("pay", {"amount": 1.5, "to": "bob"})) == "paid 1.5 to bob"
    assert text_of(await client.call_tool("whoami")) == name

    resources = (await client.list_resources()).resources
    assert [str(r.uri) for r in resources] == ["file:///docs/readme.md"]
    readme = (await client.read_resource("file:///docs/readme.md")).contents
    assert isinstance(readme[0], TextResourceContents) and readme[0].text == f"hello from {name}"
    templates = (await client.list_resource_templates()).resource_templates
    assert [t.uri_template for t in templates] == ["file:///notes/{id}"]
    note = (await client.read_resource("file:///notes/42")).contents
    assert isinstance(note[0], TextResourceContents) and note[0].text == "note 42"

    prompts = (await client.list_prompts()).prompts
    assert [p.name for p in prompts] == ["greet"]
    assert [(a.name, a.required) for a in prompts[0].arguments or []] == [("name", True)]
    greeting = await client.get_prompt("greet", {"name": "Ada"})
    assert [m.role for m in greeting.messages] == ["user"]
    assert greeting.messages[0].content == TextContent(type="text", text="Hello Ada")


async def check_progress(client: Client) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    result = await client.call_tool("slow_count", {"n": 3}, progress_callback=on_progress)
    assert text_of(result) == "counted 3"
    assert seen == [(1, 3, "step 1/3"), (2, 3, "step 2/3"), (3, 3, "step 3/3")]


async def check_sampling_and_elicitation(client: Client) -> None:
    assert text_of(await client.call_tool("ask_llm", {"question": "2+2?"})) == "sampled!"
    assert text_of(await client.call_tool("confirm", {"action": "deploy"})) == "confirmed"


def callbacks() -> dict:
    return {"sampling": sampling_reply("sampled!"), "elicitation": elicitation_reply("accept", {"ok": True})}


async def test_streamable_http(upstream_a):
    async with connect(upstream_a.url, headers={"Authorization": "Bearer ignored"}, **callbacks()) as client:
        # mode="legacy": the initialize handshake at the newest handshake-era version.
        assert client.protocol_version == LATEST_HANDSHAKE_VERSION
        assert client.session.initialize_result is not None
        await check_basics(client, "up-a")
        await check_progress(client)
        await check_sampling_and_elicitation(client)


async def test_sampling_callback_sees_the_request(upstream_a):
    """The server's sampling request carries the question; an elicitation decline is reported."""
    questions: list[str] = []

    async def sampling(context, params):
        questions.append(params.messages[0].content.text)
        return await sampling_reply("42")(context, params)

    async with connect(upstream_a.url, sampling=sampling, elicitation=elicitation_reply("decline")) as client:
        assert text_of(await client.call_tool("ask_llm", {"question": "meaning?"})) == "42"
        assert questions == ["meaning?"]
        assert text_of(await client.call_tool("confirm", {"action": "x"})) == "declined"

    async with connect(upstream_a.url, elicitation=elicitation_reply("accept", {"ok": False})) as client:
        assert text_of(await client.call_tool("confirm", {"action": "x"})) == "declined"


async def test_without_sampling_capability_the_call_is_refused(upstream_a):
    """A client that declared no sampling capability gets a JSON-RPC error, not a tool result."""
    async with connect(upstream_a.url) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("ask_llm", {"question": "?"})
        assert refused.value.code == MISSING_REQUIRED_CLIENT_CAPABILITY
        assert "sampling" in refused.value.error.message


async def test_auto_mode_uses_the_2026_protocol(upstream_a):
    """`mode="auto"` probes server/discover, which MCPServer answers: the stateless 2026 era, where
    sampling/elicitation come back as InputRequiredResult and the Client retries with the answers."""
    async with connect(upstream_a.url, mode="auto", **callbacks()) as client:
        assert client.protocol_version == LATEST_MODERN_VERSION
        assert client.session.discover_result is not None
        await check_basics(client, "up-a")
        await check_progress(client)
        await check_sampling_and_elicitation(client)


async def test_variant_b(upstream_b):
    async with connect(upstream_b.url) as client:
        assert client.server_info is not None and client.server_info.name == "up-b"
        assert {t.name for t in (await client.list_tools()).tools} == {"echo", "only_b"}
        assert text_of(await client.call_tool("echo", {"text": "x"})) == "b:x"
        assert text_of(await client.call_tool("only_b")) == "b"
        readme = (await client.read_resource("file:///docs/readme.md")).contents
        assert readme[0].text == "hello from up-b"


async def test_sse():
    with start_upstream("sse", name="up-sse") as up:
        async with connect_sse(up.url, **callbacks()) as client:
            await check_basics(client, "up-sse")
            await check_progress(client)
            await check_sampling_and_elicitation(client)


async def test_stdio():
    async with connect_stdio(upstream_args("stdio", name="up-stdio"), **callbacks()) as client:
        assert client.protocol_version == LATEST_HANDSHAKE_VERSION
        await check_basics(client, "up-stdio")
        await check_progress(client)
        await check_sampling_and_elicitation(client)
