"""Drive an A2A agent with the official Python SDK client (`a2a-sdk` 1.3), in protocol 1.0 or 0.3.

    python e2e/a2a_probe.py http://127.0.0.1:PORT [--version 1.0|0.3|both] [--binding JSONRPC|HTTP+JSON]
                            [--header 'Name: value' ...] [--verify-key PUBLIC_PEM]

It resolves the card, sends `hello` (non-streaming), streams `slow`, gets that task, runs the
`ask` two-turn exchange, cancels a `wait` task and registers a push webhook (served by this script),
checking each answer against e2e/a2a_agent.py's behaviour. Exit status 0 means all steps passed.
It is the recipe the gateway tests follow; the functions are meant to be copied or imported.

How the SDK client is steered:

* Version: `ClientFactory` picks, for the chosen binding, the card interface with protocol
  version 1.0 when there is one, and the v0.3 compat transport (`message/send`, `A2A-Version: 0.3`)
  only for an interface whose protocolVersion is 0.3.x. `pin_card` keeps only the interfaces of
  one version and binding, which forces the choice.
* Binding: `ClientConfig.supported_protocol_bindings=[binding]`.
* Extra headers on every request: default headers of the `httpx.AsyncClient` passed as
  `ClientConfig.httpx_client` (a per-call alternative is `ClientCallContext(service_parameters=
  {...})`, which is what the SDK's AuthInterceptor fills in).
* Streaming or not: `ClientConfig.streaming` (a card with streaming=true and streaming=True
  config makes `send_message` use SendStreamingMessage / message/stream).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.helpers import get_artifact_text, get_message_text
from a2a.types import (
    AgentCard,
    AuthenticationInfo,
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskPushNotificationConfig,
    TaskState,
)

TIMEOUT = 15.0
PUSH_TOKEN = "probe-push-token"
PUSH_AUTH = ("Bearer", "probe-push-secret")


class ProbeFailure(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise ProbeFailure(what)


def state_name(state: int) -> str:
    return TaskState.Name(state)


# --- client construction -------------------------------------------------------------------------


async def resolve_card(base_url: str, headers: dict[str, str], verify_key: str | None) -> AgentCard:
    """GET <base_url>/.well-known/agent-card.json, optionally checking its ES256 signature."""
    verifier = None
    if verify_key:
        from a2a.utils.signing import create_signature_verifier

        with open(verify_key, "rb") as f:
            public_pem = f.read()
        verifier = create_signature_verifier(lambda kid, jku: public_pem, ["ES256"])
    async with httpx.AsyncClient(headers=headers, timeout=TIMEOUT) as http:
        try:
            return await A2ACardResolver(http, base_url).get_agent_card(signature_verifier=verifier)
        except Exception as e:  # SignatureVerificationError, AgentCardResolutionError
            raise ProbeFailure(f"card: {type(e).__name__}: {e}") from e


def pin_card(card: AgentCard, version: str, binding: str) -> AgentCard:
    """A copy of the card that lists only the interfaces of one protocol version and binding."""
    pinned = AgentCard()
    pinned.CopyFrom(card)
    keep = [
        i
        for i in card.supported_interfaces
        if i.protocol_binding == binding and i.protocol_version.startswith(version)
    ]
    check(bool(keep), f"card has no {binding} interface for protocol {version}")
    del pinned.supported_interfaces[:]
    pinned.supported_interfaces.extend(keep)
    return pinned


def make_client(
    card: AgentCard, version: str, binding: str, http: httpx.AsyncClient, streaming: bool
) -> Client:
    """An SDK client speaking `version` over `binding`; `http` carries the extra headers.

    The factory adds `A2A-Version: 1.0` to the shared httpx client's defaults; the 0.3 transport
    overrides it per request with `A2A-Version: 0.3`."""
    config = ClientConfig(
        streaming=streaming, httpx_client=http, supported_protocol_bindings=[binding]
    )
    return ClientFactory(config).create(pin_card(card, version, binding))


# --- messages ----------------------------------------------------------------------------------------


def user_message(text: str, task_id: str = "", context_id: str = "") -> Message:
    """A user text message; set task_id/context_id to continue an existing task."""
    return Message(
        role=Role.ROLE_USER,
        message_id=str(uuid.uuid4()),
        parts=[Part(text=text)],
        task_id=task_id,
        context_id=context_id,
    )


def send_request(message: Message, return_immediately: bool = False) -> SendMessageRequest:
    return SendMessageRequest(
        message=message,
        configuration=SendMessageConfiguration(return_immediately=return_immediately),
    )


async def send_for_task(client: Client, request: SendMessageRequest) -> Task:
    """Non-streaming send: the SDK yields exactly one StreamResponse holding the task."""
    async for event in client.send_message(request):
        check(event.HasField("task"), f"expected a task, got {event}")
        return event.task
    raise ProbeFailure("send_message yielded nothing")


def task_text(task: Task) -> str:
    return " | ".join(get_artifact_text(a, delimiter="") for a in task.artifacts)


def describe(event: StreamResponse) -> str:
    if event.HasField("task"):
        return f"task {event.task.id} {state_name(event.task.status.state)}"
    if event.HasField("status_update"):
        status = event.status_update.status
        text = get_message_text(status.message) if status.HasField("message") else ""
        return f"status {state_name(status.state)} {text!r}"
    if event.HasField("artifact_update"):
        update = event.artifact_update
        text = get_artifact_text(update.artifact, delimiter="")
        return f"artifact {update.artifact.artifact_id} append={update.append} last={update.last_chunk} {text!r}"
    if event.HasField("message"):
        return f"message {get_message_text(event.message)!r}"
    return str(event)


# --- steps -------------------------------------------------------------------------------------------


async def step_hello(client: Client) -> None:
    task = await send_for_task(client, send_request(user_message("hello")))
    print(f"  hello -> {state_name(task.status.state)} {task_text(task)!r}")
    check(task.status.state == TaskState.TASK_STATE_COMPLETED, "hello did not complete")
    check(task_text(task).startswith("echo: hello from "), "hello reply text")


async def step_stream(client: Client, chunks: int = 4) -> str:
    """Stream `slow N`; the artifact chunks must arrive one by one, not in a single burst."""
    start = time.monotonic()
    task_id, states, arrivals = "", [], []
    async for event in client.send_message(send_request(user_message(f"slow {chunks}"))):
        print(f"  +{time.monotonic() - start:5.2f}s {describe(event)}")
        if event.HasField("task"):
            task_id = event.task.id
        elif event.HasField("status_update"):
            task_id = task_id or event.status_update.task_id
            states.append(event.status_update.status.state)
        elif event.HasField("artifact_update"):
            arrivals.append(time.monotonic())
    check(len(arrivals) == chunks, f"expected {chunks} artifact updates, got {len(arrivals)}")
    check(arrivals[-1] - arrivals[0] >= 0.1 * (chunks - 1), "artifact updates were not spread out")
    check(states[-1:] == [TaskState.TASK_STATE_COMPLETED], "stream did not end completed")
    return task_id


async def step_get_task(client: Client, task_id: str) -> None:
    task = await client.get_task(GetTaskRequest(id=task_id))
    print(f"  get {task_id} -> {state_name(task.status.state)} {task_text(task)!r}")
    check(task.status.state == TaskState.TASK_STATE_COMPLETED, "slow task is not completed")
    check(task_text(task).startswith("chunk 1/"), "appended artifact text")


async def step_multi_turn(client: Client) -> None:
    first = await send_for_task(client, send_request(user_message("ask")))
    print(f"  ask -> {state_name(first.status.state)} {get_message_text(first.status.message)!r}")
    check(first.status.state == TaskState.TASK_STATE_INPUT_REQUIRED, "ask did not require input")
    follow_up = user_message("42", task_id=first.id, context_id=first.context_id)
    second = await send_for_task(client, send_request(follow_up))
    print(f"  42 -> {state_name(second.status.state)} {task_text(second)!r}")
    check(second.id == first.id, "follow-up landed on another task")
    check(second.status.state == TaskState.TASK_STATE_COMPLETED, "follow-up did not complete")
    check("got '42' for 'ask'" in task_text(second), "follow-up text does not quote the first turn")


async def step_cancel(client: Client) -> None:
    task = await send_for_task(client, send_request(user_message("wait"), return_immediately=True))
    print(f"  wait -> {state_name(task.status.state)}")
    check(task.status.state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING), "wait state")
    canceled = await client.cancel_task(CancelTaskRequest(id=task.id))
    print(f"  cancel {task.id} -> {state_name(canceled.status.state)}")
    check(canceled.status.state == TaskState.TASK_STATE_CANCELED, "cancel did not cancel")
    again = await client.get_task(GetTaskRequest(id=task.id))
    check(again.status.state == TaskState.TASK_STATE_CANCELED, "get after cancel")


async def step_push(client: Client, webhook: Webhook) -> None:
    """Start `slow 3` without waiting, register the webhook for it, await the completed push."""
    task = await send_for_task(client, send_request(user_message("slow 3"), return_immediately=True))
    config = TaskPushNotificationConfig(
        task_id=task.id,
        url=webhook.url,
        token=PUSH_TOKEN,
        authentication=AuthenticationInfo(scheme=PUSH_AUTH[0], credentials=PUSH_AUTH[1]),
    )
    stored = await client.create_task_push_notification_config(config)
    print(f"  push config {stored.id} for task {stored.task_id} -> {stored.url}")
    headers, body = await webhook.wait_for(task.id, "TASK_STATE_COMPLETED")
    print(f"  push received: headers {headers}")
    print(f"  push body: {json.dumps(body)[:300]}")
    check(headers.get("x-a2a-notification-token") == PUSH_TOKEN, "push token header")
    check(headers.get("authorization") == f"{PUSH_AUTH[0]} {PUSH_AUTH[1]}", "push authorization header")


# --- push webhook receiver -----------------------------------------------------------------------------


class Webhook:
    """A stdlib HTTP server on 127.0.0.1:<free port> collecting POSTed push notifications."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.arrived = threading.Condition()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                self.send_response(200)
                self.end_headers()
                with webhook.arrived:
                    webhook.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    webhook.arrived.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/push"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    async def wait_for(self, task_id: str, state: str) -> tuple[dict[str, str], dict[str, Any]]:
        """The first notification for task_id whose task or status update has the given state."""
        return await asyncio.to_thread(self._wait_for, task_id, state)

    def _wait_for(self, task_id: str, state: str) -> tuple[dict[str, str], dict[str, Any]]:
        def find() -> tuple[dict[str, str], dict[str, Any]] | None:
            for headers, body in self.received:
                item = body.get("statusUpdate") or body.get("task") or {}
                if item.get("taskId", item.get("id")) == task_id and item.get("status", {}).get("state") == state:
                    return headers, body
            return None

        with self.arrived:
            check(self.arrived.wait_for(find, timeout=TIMEOUT), f"no {state} push for {task_id}")
            return find()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- main ----------------------------------------------------------------------------------------------


async def probe(card: AgentCard, version: str, binding: str, headers: dict[str, str], webhook: Webhook) -> None:
    print(f"== protocol {version} over {binding}")
    async with httpx.AsyncClient(headers=headers, timeout=TIMEOUT) as http:
        blocking = make_client(card, version, binding, http, streaming=False)
        streaming = make_client(card, version, binding, http, streaming=True)
        print(f"  transport {type(blocking._transport).__name__} -> {blocking._transport.url}")
        await step_hello(blocking)
        slow_task = await step_stream(streaming)
        await step_get_task(blocking, slow_task)
        await step_multi_turn(blocking)
        await step_cancel(blocking)
        await step_push(blocking, webhook)


async def main_async(args: argparse.Namespace) -> int:
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    versions = ["1.0", "0.3"] if args.version == "both" else [args.version]
    webhook = Webhook()
    try:
        card = await resolve_card(args.url, headers, args.verify_key)
        print(f"card {card.name!r} signatures={len(card.signatures)}: " + ", ".join(
            f"{i.protocol_binding} {i.protocol_version} {i.url}" for i in card.supported_interfaces
        ))
        for version in versions:
            await probe(card, version, args.binding, headers, webhook)
    except ProbeFailure as e:
        print(f"FAILED: {e}")
        return 1
    finally:
        webhook.close()
    print("OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="agent base URL, e.g. http://127.0.0.1:41241")
    parser.add_argument("--version", choices=["1.0", "0.3", "both"], default="both")
    parser.add_argument("--binding", choices=["JSONRPC", "HTTP+JSON"], default="JSONRPC")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', sent on every request")
    parser.add_argument("--verify-key", metavar="PUBLIC_PEM", help="verify the card's ES256 signature")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
