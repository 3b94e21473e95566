"""A real MCP server (official Python SDK, `mcp` 2.x MCPServer) used as the upstream that the
gateway fronts in end-to-end tests.

    python e2e/mcp_upstream.py --transport stdio|sse|streamable-http [--port N] [--name NAME] [--variant a|b]
                               [--oauth CLIENT_ID:SECRET [--token-lifetime SECONDS]]

HTTP transports bind 127.0.0.1:PORT. Streamable HTTP serves `/mcp`; SSE serves the SDK defaults
(`GET /sse` for the event stream, `POST /messages/?session_id=...` for client messages).

`--oauth CLIENT_ID:SECRET` (streamable HTTP only) makes the server its own OAuth authorization
server for the client credentials grant, for testing a gateway's upstream OAuth client:

* `POST /token` takes `grant_type=client_credentials` (form-encoded, any other form fields are
  recorded) with `client_secret_basic` authentication (`Authorization: Basic
  base64(urlencode(id):urlencode(secret))`) and answers `{access_token, token_type: "Bearer",
  expires_in}`; the token is random and opaque and lives `--token-lifetime` seconds (default
  3600). A wrong or missing client is a 401 `{"error": "invalid_client"}`; another grant type a
  400 `{"error": "unsupported_grant_type"}`.
* `/mcp` then requires `Authorization: Bearer <an issued, unexpired token>` on every method, and
  otherwise answers 401 with `WWW-Authenticate: Bearer`.
* Test hooks, without authentication: `GET /oauth/stats` reports `tokens_issued`,
  `token_requests` (every POST /token, refused ones included), `issued` (the tokens, in order),
  `last_form` (the form fields of the last POST /token), `bearer_seen` (the distinct
  `Authorization` values seen on /mcp, in order) and `rejected` (how many /mcp requests got a
  401); `POST /oauth/revoke-all` invalidates every token issued so far.

Without `--oauth` nothing of this exists and /mcp is open.

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
import base64
import binascii
import secrets
import sys
import time
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote_plus

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
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

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


# --- OAuth (client credentials) for the streamable HTTP transport -----------------------------


class OAuthState:
    """The authorization server's and the resource server's shared state (one event loop, so no
    locks): the registered client, the tokens issued and what the test hooks report."""

    def __init__(self, client_id: str, client_secret: str, lifetime: int) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.lifetime = lifetime
        self.tokens: dict[str, float] = {}  # token -> time.monotonic() it expires at
        self.issued: list[str] = []
        self.token_requests = 0
        self.last_form: dict[str, str] = {}
        self.bearer_seen: list[str] = []
        self.rejected = 0

    def client_matches(self, authorization: str | None) -> bool:
        """`client_secret_basic` (RFC 6749 2.3.1): both parts form-urlencoded, then base64."""
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        client_id, sep, client_secret = decoded.partition(":")
        if not sep:
            return False
        return secrets.compare_digest(unquote_plus(client_id), self.client_id) and secrets.compare_digest(
            unquote_plus(client_secret), self.client_secret
        )

    def issue(self) -> str:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + self.lifetime
        self.issued.append(token)
        return token

    def valid(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        expires = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        return expires is not None and time.monotonic() < expires

    def stats(self) -> dict[str, Any]:
        return {
            "tokens_issued": len(self.issued),
            "token_requests": self.token_requests,
            "issued": list(self.issued),
            "last_form": dict(self.last_form),
            "bearer_seen": list(self.bearer_seen),
            "rejected": self.rejected,
        }


def _oauth_error(status: int, error: str, description: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", **headers},
    )


def install_oauth(server: MCPServer, state: OAuthState) -> None:
    """Add the token endpoint and the test hooks as custom routes (they need no bearer token).

    Must run before `server.streamable_http_app()`, which is what mounts custom routes."""

    @server.custom_route("/token", methods=["POST"])
    async def token(request: Request) -> Response:
        state.token_requests += 1
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return _oauth_error(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
        try:
            form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            return _oauth_error(400, "invalid_request", "the body is not UTF-8")
        state.last_form = form
        if not state.client_matches(request.headers.get("authorization")):
            return _oauth_error(401, "invalid_client", "client authentication failed", **{"WWW-Authenticate": "Basic"})
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
        body: dict[str, Any] = {"access_token": state.issue(), "token_type": "Bearer", "expires_in": state.lifetime}
        if "scope" in form:
            body["scope"] = form["scope"]
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    @server.custom_route("/oauth/stats", methods=["GET"])
    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats())

    @server.custom_route("/oauth/revoke-all", methods=["POST"])
    async def revoke_all(request: Request) -> Response:
        revoked = len(state.tokens)
        state.tokens.clear()
        return JSONResponse({"revoked": revoked})


class RequireBearer:
    """ASGI middleware: every request to `path` must carry a live token from `state`."""

    def __init__(self, app: ASGIApp, state: OAuthState, path: str = "/mcp") -> None:
        self.app = app
        self.state = state
        self.path = path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != self.path:
            await self.app(scope, receive, send)
            return
        values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
        authorization = values[0] if values else None
        if authorization is not None and authorization not in self.state.bearer_seen:
            self.state.bearer_seen.append(authorization)
        if self.state.valid(authorization):
            await self.app(scope, receive, send)
            return
        self.state.rejected += 1
        challenge = "Bearer" if authorization is None else 'Bearer error="invalid_token"'
        response = _oauth_error(401, "invalid_token", "a valid bearer token is required", **{"WWW-Authenticate": challenge})
        await response(scope, receive, send)


def run_streamable_http_with_oauth(server: MCPServer, port: int, state: OAuthState) -> None:
    """`server.run("streamable-http", ...)` with the OAuth routes and the bearer check added."""
    import uvicorn

    install_oauth(server, state)
    app = server.streamable_http_app(
        streamable_http_path="/mcp", transport_security=NO_HOST_CHECKS, host="127.0.0.1"
    )
    app.add_middleware(RequireBearer, state=state, path="/mcp")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    anyio.run(uvicorn.Server(config).serve)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=["stdio", "sse", "streamable-http"], default="stdio")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default="upstream")
    parser.add_argument("--variant", choices=["a", "b"], default="a")
    parser.add_argument(
        "--oauth",
        metavar="CLIENT_ID:SECRET",
        help="streamable-http only: serve POST /token (client credentials) and require its tokens on /mcp",
    )
    parser.add_argument(
        "--token-lifetime", type=int, default=3600, metavar="SECONDS", help="expires_in of issued tokens"
    )
    args = parser.parse_args(argv)
    oauth = None
    if args.oauth is not None:
        if args.transport != "streamable-http":
            parser.error("--oauth needs --transport streamable-http")
        client_id, sep, client_secret = args.oauth.partition(":")
        if not sep or not client_id:
            parser.error("--oauth takes CLIENT_ID:SECRET")
        if args.token_lifetime < 1:
            parser.error("--token-lifetime must be at least 1")
        oauth = OAuthState(client_id, client_secret, args.token_lifetime)

    server = build_server(args.name, args.variant)
    if args.transport == "stdio":
        server.run("stdio")
    elif args.transport == "sse":
        server.run("sse", host="127.0.0.1", port=args.port, transport_security=NO_HOST_CHECKS)
    elif oauth is not None:
        run_streamable_http_with_oauth(server, args.port, oauth)
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
