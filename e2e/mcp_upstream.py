"""A real MCP server (official Python SDK, `mcp` 2.x MCPServer) used as the upstream that the
gateway fronts in end-to-end tests.

    python e2e/mcp_upstream.py --transport stdio|sse|streamable-http [--port N] [--name NAME] [--variant a|b]

HTTP transports bind 127.0.0.1:PORT. Streamable HTTP serves `/mcp`; SSE serves the SDK defaults
(`GET /sse` for the event stream, `POST /messages/?session_id=...` for client messages).

Variant "a" (default) exposes the full test surface: echo, add, read_file, pay (destructive),
slow_count (progress), ask_llm (sampling), confirm (form elicitation) and whoami. Variant "b" is a
second upstream for federation tests: an `echo` that collides with variant a's (answers "b:<text>")
and `only_b`. Both variants serve the same resources and prompt, and report --name as serverInfo.name.

Sampling and elicitation go through the SDK's `Resolve(...)` resolvers rather than raw
`ctx.session.create_message` / `ctx.elicit`, so they work in both protocol eras: a handshake-era
(initialize, <= 2025-11-25) client gets a real `sampling/createMessage` / `elicitation/create`
request mid-call on the tools/call response stream; a 2026-07-28 (server/discover) client gets an
`InputRequiredResult` and retries the call with the answers.
"""

# NB: no `from __future__ import annotations`: the SDK resolves the `Annotated[..., Resolve(fn)]`
# hints of tool functions with typing.get_type_hints, and string annotations would then have to be
# importable module globals. The resolvers below are module-level for the same reason.

import argparse
import sys
from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    MCPServer,
    Resolve,
    Sample,
    UserMessage,
)
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CreateMessageResult, SamplingMessage, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

# The SDK auto-enables DNS-rebinding protection (a Host/Origin allow-list) when bound to
# 127.0.0.1. The default list would accept `Host: 127.0.0.1:PORT`, but a proxying gateway may
# forward another Host or an Origin; this is a test fixture, so switch the check off outright.
NO_HOST_CHECKS = TransportSecuritySettings(enable_dns_rebinding_protection=False)


# --- Resolvers (sampling / elicitation) -------------------------------------------------------


def _sample_answer(question: str) -> Sample:
    """Ask the client's LLM the tool's `question` (filled in by name from the tool arguments)."""
    return Sample(
        [SamplingMessage(role="user", content=TextContent(type="text", text=question))],
        max_tokens=64,
    )


class Confirmation(BaseModel):
    """The elicitation form: a single required boolean field `ok`."""

    ok: bool = Field(description="Go ahead?")


def _elicit_confirmation(action: str) -> Elicit[Confirmation]:
    return Elicit(f"Confirm: {action}?", Confirmation)


# --- Server -----------------------------------------------------------------------------------


def build_server(name: str = "upstream", variant: Literal["a", "b"] = "a") -> MCPServer:
    """Build the test server; `name` becomes serverInfo.name (and whoami's answer)."""
    # log_level WARNING keeps uvicorn's per-request access log out of the test output.
    mcp = MCPServer(name, version="1.0.0", log_level="WARNING")

    if variant == "a":

        @mcp.tool(description="Return the text unchanged.")
        def echo(text: str) -> str:
            return text

        @mcp.tool(description="Add two integers.")
        def add(a: int, b: int) -> int:
            return a + b

        @mcp.tool(description="Pretend to read a file (no real file access).")
        def read_file(path: str) -> str:
            return f"contents of {path}"

        @mcp.tool(
            description="Pretend to send money.",
            annotations=ToolAnnotations(destructive_hint=True, read_only_hint=False),
        )
        def pay(amount: float, to: str) -> str:
            return f"paid {amount} to {to}"

        @mcp.tool(description="Report progress n times, then finish.")
        async def slow_count(n: int, ctx: Context, delay: float = 0.01) -> str:
            for i in range(1, n + 1):
                # A no-op unless the caller sent a progressToken in the request's _meta.
                await ctx.report_progress(i, n, f"step {i}/{n}")
                await anyio.sleep(delay)
            return f"counted {n}"

        @mcp.tool(description="Ask the client's LLM (sampling/createMessage) and return its text.")
        async def ask_llm(
            question: str,
            answer: Annotated[CreateMessageResult, Resolve(_sample_answer)],
        ) -> str:
            content = answer.content
            return content.text if isinstance(content, TextContent) else f"<{content.type}>"

        @mcp.tool(description="Ask the user to confirm an action (form elicitation).")
        async def confirm(
            action: str,
            outcome: Annotated[ElicitationResult[Confirmation], Resolve(_elicit_confirmation)],
        ) -> str:
            if isinstance(outcome, AcceptedElicitation):
                return "confirmed" if outcome.data.ok else "declined"
            return "declined" if outcome.action == "decline" else "cancelled"

        @mcp.tool(description="Name of this upstream (its --name).")
        def whoami() -> str:
            return name

    else:

        @mcp.tool(description="Variant b's echo: the text prefixed with 'b:'.")
        def echo(text: str) -> str:
            return f"b:{text}"

        @mcp.tool(description="A tool only variant b has.")
        def only_b() -> str:
            return "b"

    @mcp.resource("file:///docs/readme.md", name="readme", mime_type="text/markdown")
    def readme() -> str:
        return f"hello from {name}"

    @mcp.resource("file:///notes/{id}", name="note", mime_type="text/plain")
    def note(id: str) -> str:
        return f"note {id}"

    @mcp.prompt(description="Greet someone.")
    def greet(name: str) -> list[UserMessage]:
        return [UserMessage(f"Hello {name}")]

    return mcp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=["stdio", "sse", "streamable-http"], default="stdio")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default="upstream")
    parser.add_argument("--variant", choices=["a", "b"], default="a")
    args = parser.parse_args(argv)

    server = build_server(args.name, args.variant)
    if args.transport == "stdio":
        server.run("stdio")
    elif args.transport == "sse":
        server.run("sse", host="127.0.0.1", port=args.port, transport_security=NO_HOST_CHECKS)
    else:
        server.run(
            "streamable-http",
            host="127.0.0.1",
            port=args.port,
            streamable_http_path="/mcp",
            transport_security=NO_HOST_CHECKS,
        )


if __name__ == "__main__":
    sys.exit(main())
