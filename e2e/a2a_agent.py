"""A real A2A agent (official Python SDK, `a2a-sdk` 1.3) used as the upstream that the gateway
fronts in end-to-end tests.

    python e2e/a2a_agent.py --port N [--name NAME] [--replica R] [--sign-key PEM_PATH] [--log-wire]

Binds 127.0.0.1:PORT and prints `READY <port>` once it is serving. Every endpoint speaks both
A2A 1.0 and 0.3 (the SDK's v0.3 compat layer, `enable_v0_3_compat=True`); the version is told
apart by the JSON-RPC method name (`SendMessage` vs `message/send`) or the REST path
(`/message:send` vs `/v1/message:send`), and the `A2A-Version` header:

* `GET  /.well-known/agent-card.json` the card (a 1.0 card with the 0.3 fields merged in);
* `POST /a2a/jsonrpc`                 JSON-RPC binding;
* `/a2a/rest/...`                     HTTP+JSON binding (1.0 at `/a2a/rest/message:send`,
                                      0.3 at `/a2a/rest/v1/message:send`).

Behaviour, on the text of the user message:

* `hello` (or anything else) -> a completed task with artifact `echo: <text> from <replica>`
  (the status message carries the same text).
* `slow [N]` -> working, then N (default 5) appended chunks of one artifact ~200 ms apart,
  then completed with `echo: slow from <replica>`.
* `ask` -> input-required; a follow-up message on the same taskId/contextId completes the task
  with `got '<answer>' for '<first turn>' from <replica>`.
* `wait` -> working until canceled (CancelTask / tasks/cancel) -> canceled.
* `fail` -> failed.

Push notifications: configs go to an in-memory store; updates are POSTed (SDK
BasePushNotificationSender: the 1.0 StreamResponse JSON, `X-A2A-Notification-Token: <token>`,
`Authorization: <scheme> <credentials>`). Loopback push URLs are accepted on purpose.

Test hooks (not A2A): `GET /_seen` lists every request seen so far as
`{"method", "path", "headers": {...}, "body": "..."}`, keeping only `authorization`,
`traceparent`, `tracestate` and `a2a-*` / `x-*` headers; `DELETE /_seen` clears it.
`--log-wire` also prints each request and response body to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from a2a.helpers import get_message_text
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import (
    BasePushNotificationSender,
    InMemoryPushNotificationConfigStore,
    InMemoryTaskStore,
    TaskUpdater,
)
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Message,
    Part,
    Role,
    Task,
    TaskState,
    TaskStatus,
)

JSONRPC_PATH = "/a2a/jsonrpc"
REST_PATH = "/a2a/rest"
SLOW_STEP_SECONDS = 0.2
SIGNING_KID = "agent-key-1"
RECORDED_HEADERS = ("authorization", "traceparent", "tracestate")
RECORDED_PREFIXES = ("a2a-", "x-")
MAX_RECORDED_BODY = 64 * 1024


# --- agent behaviour ---------------------------------------------------------------------------


class EchoExecutor(AgentExecutor):
    """Echoes text; `slow`, `ask`, `wait` and `fail` exercise streaming, multi-turn and cancel."""

    def __init__(self, replica: str) -> None:
        self.replica = replica

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input().strip()
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        task = context.current_task
        if task is not None and task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED:
            await self._answer_follow_up(updater, task, text)
            return
        if task is None:
            # A new task: publish it first, as the SDK's own samples do.
            await event_queue.enqueue_event(
                Task(
                    id=context.task_id,
                    context_id=context.context_id,
                    status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                    history=[context.message],
                )
            )
        word = text.split(maxsplit=1)[0].lower() if text else ""
        if word == "slow":
            await self._slow(updater, text)
        elif word == "ask":
            await updater.requires_input(self._say(updater, f"what is your answer? ({self.replica})"))
        elif word == "wait":
            await updater.start_work(self._say(updater, f"waiting until canceled ({self.replica})"))
            await asyncio.Event().wait()  # the SDK cancels this coroutine on CancelTask
        elif word == "fail":
            await updater.failed(self._say(updater, f"failed as asked ({self.replica})"))
        else:
            await self._finish(updater, f"echo: {text} from {self.replica}")

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.cancel(self._say(updater, f"canceled ({self.replica})"))

    async def _slow(self, updater: TaskUpdater, text: str) -> None:
        """Working, then N appended chunks of one artifact spaced SLOW_STEP_SECONDS apart."""
        parts = text.split()
        count = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 5
        await updater.start_work(self._say(updater, f"working on {count} chunks ({self.replica})"))
        for i in range(count):
            await asyncio.sleep(SLOW_STEP_SECONDS)
            await updater.add_artifact(
                [Part(text=f"chunk {i + 1}/{count} ")],
                artifact_id="slow-output",
                name="slow",
                append=i > 0,
                last_chunk=i == count - 1,
            )
        await updater.complete(self._say(updater, f"echo: slow from {self.replica}"))

    async def _answer_follow_up(self, updater: TaskUpdater, task: Task, answer: str) -> None:
        """Second turn of `ask`: quote the first user turn from the task history."""
        first = next((m for m in task.history if m.role == Role.ROLE_USER), None)
        first_text = get_message_text(first).strip() if first else ""
        await self._finish(updater, f"got '{answer}' for '{first_text}' from {self.replica}")

    async def _finish(self, updater: TaskUpdater, reply: str) -> None:
        await updater.add_artifact([Part(text=reply)], name="reply", last_chunk=True)
        await updater.complete(self._say(updater, reply))

    @staticmethod
    def _say(updater: TaskUpdater, text: str) -> Message:
        return updater.new_agent_message([Part(text=text)])


# --- agent card --------------------------------------------------------------------------------


def build_card(base_url: str, name: str) -> AgentCard:
    """The card lists JSON-RPC then HTTP+JSON, each in 1.0 and 0.3, all at this agent's own URLs."""
    interfaces = [
        AgentInterface(protocol_binding=binding, protocol_version=version, url=base_url + path)
        for binding, path in (("JSONRPC", JSONRPC_PATH), ("HTTP+JSON", REST_PATH))
        for version in ("1.0", "0.3")
    ]
    return AgentCard(
        name=name,
        description="Echo agent for tollgate end-to-end tests.",
        version="1.0.0",
        supported_interfaces=interfaces,
        capabilities=AgentCapabilities(streaming=True, push_notifications=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id="echo",
                name="Echo",
                description="Echoes text; 'slow', 'ask', 'wait', 'fail' trigger test behaviours.",
                tags=["test"],
                examples=["hello", "slow 3", "ask", "wait"],
            )
        ],
    )


def sign_card(card: AgentCard, pem_path: str) -> None:
    """Append an ES256 JWS signature (kid SIGNING_KID) to the card, in place."""
    from a2a.utils.signing import create_agent_card_signer  # needs the `signing` extra

    with open(pem_path, "rb") as f:
        key = f.read()
    # No `jku`: verifiers are given the public key out of band.
    signer = create_agent_card_signer(key, {"alg": "ES256", "kid": SIGNING_KID, "typ": "JOSE"})
    signer(card)


# --- request recording (test hook) -------------------------------------------------------------


def interesting_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if name in RECORDED_HEADERS or name.startswith(RECORDED_PREFIXES):
            value = raw_value.decode("latin-1")
            seen[name] = f"{seen[name]}, {value}" if name in seen else value
    return seen


class RecordRequests:
    """Pure ASGI middleware (so SSE responses stream untouched) that records request headers and
    bodies into `seen`, and with `log_wire` prints request and response bodies to stderr."""

    def __init__(self, app: Any, seen: list[dict[str, Any]], log_wire: bool) -> None:
        self.app = app
        self.seen = seen
        self.log_wire = log_wire

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_seen"):
            await self.app(scope, receive, send)
            return
        entry = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": interesting_headers(scope["headers"]),
            "body": "",
        }
        self.seen.append(entry)
        if self.log_wire:
            self._log(f">>> {entry['method']} {entry['path']} {entry['headers']}")

        async def recording_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request" and len(entry["body"]) < MAX_RECORDED_BODY:
                entry["body"] += message.get("body", b"").decode("utf-8", "replace")
                if self.log_wire and entry["body"] and not message.get("more_body"):
                    self._log(f">>> body\n{entry['body']}")
            return message

        async def logging_send(message: dict[str, Any]) -> None:
            if self.log_wire and message["type"] == "http.response.body" and message.get("body"):
                self._log(f"<<< {entry['path']}\n{message['body'].decode('utf-8', 'replace')}")
            await send(message)

        await self.app(scope, recording_receive, logging_send)

    @staticmethod
    def _log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)


# --- app ---------------------------------------------------------------------------------------


async def accept_any_http_url(url: str) -> bool:
    """Push URL policy for tests: any http(s) URL, loopback included (the gateway's callback is
    on 127.0.0.1). The SDK's strict `a2a.utils.push_url_validator.validate_push_notification_url`
    would reject it; the SDK default (None) does no screening at all."""
    return url.startswith(("http://", "https://"))


def build_app(card: AgentCard, replica: str, log_wire: bool) -> Starlette:
    push_store = InMemoryPushNotificationConfigStore()
    push_sender = BasePushNotificationSender(
        httpx.AsyncClient(timeout=10.0), push_store, push_url_validator=accept_any_http_url
    )
    handler = DefaultRequestHandler(
        agent_executor=EchoExecutor(replica),
        task_store=InMemoryTaskStore(),
        agent_card=card,
        push_config_store=push_store,
        push_sender=push_sender,
        push_url_validator=accept_any_http_url,
    )
    seen: list[dict[str, Any]] = []

    async def get_seen(request: Request) -> Response:
        return JSONResponse(seen)

    async def clear_seen(request: Request) -> Response:
        seen.clear()
        return Response(status_code=204)

    routes = [
        *create_agent_card_routes(agent_card=card),
        *create_jsonrpc_routes(handler, rpc_url=JSONRPC_PATH, enable_v0_3_compat=True),
        *create_rest_routes(handler, path_prefix=REST_PATH, enable_v0_3_compat=True),
        Route("/_seen", get_seen, methods=["GET"]),
        Route("/_seen", clear_seen, methods=["DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(RecordRequests, seen=seen, log_wire=log_wire)
    return app


async def announce_ready(server: uvicorn.Server, port: int) -> None:
    while not server.started:
        await asyncio.sleep(0.02)
    print(f"READY {port}", flush=True)


async def serve(app: Starlette, port: int) -> None:
    # log_level warning keeps uvicorn's access log out of the test output. A failed bind makes
    # uvicorn exit with status 3 before READY is printed.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    announcer = asyncio.create_task(announce_ready(server, port))
    try:
        await server.serve()
    finally:
        announcer.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="echo-agent")
    parser.add_argument("--replica", default="r1", help="label included in replies")
    parser.add_argument("--sign-key", metavar="PEM_PATH", help="EC P-256 private key: sign the card (ES256)")
    parser.add_argument("--log-wire", action="store_true", help="print request/response bodies to stderr")
    args = parser.parse_args(argv)

    card = build_card(f"http://127.0.0.1:{args.port}", args.name)
    if args.sign_key:
        sign_card(card, args.sign_key)
    asyncio.run(serve(build_app(card, args.replica, args.log_wire), args.port))


if __name__ == "__main__":
    main()
