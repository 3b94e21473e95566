"""The agent layer (`/a2a/{agent}`) end to end, with the official A2A Python SDK (`a2a-sdk` 1.3)
on both sides.

Upstream: `e2e/a2a_agent.py`, a real SDK agent (one process per agent or replica, started once
per module on a free port). Its `/_seen` hook lists what reached it (the Authorization,
traceparent, `a2a-*` and `x-*` headers and the body of every request), which is how these
tests see what the gateway forwarded.

Client: the SDK client built as in `e2e/a2a_probe.py`: the card is fetched *through the
gateway* with the caller's key, pinned to one protocol version and binding, and the client's
httpx instance carries the `Authorization` header. Raw httpx is used only for wire-level and
negative checks (error codes and shapes, refusals that must never reach the agent).

What is covered:

* every protocol version (1.0, 0.3) x binding (JSON-RPC, HTTP+JSON): send, streaming (events
  arrive as the agent produces them), get, two-turn `ask`, cancel, push relayed to a webhook
  with the client's token and authentication;
* the rest of the operations, in every version and binding the SDK client has them for:
  SubscribeToTask (the Task first, then the events until a cancel ends the stream; another
  caller's task not found), ListTasks (1.0; by context, on the right replica; no other
  caller's tasks), push config get/list/delete, GetExtendedAgentCard (the agent's own error,
  unchanged; 401 without a credential);
* the card as served (URLs rewritten, the gateway's security scheme, re-signed when the agent
  signed it; `trusted_keys` refusing a card signed by another key);
* identity: the agent sees a gateway-minted ES256 JWT (verified against the gateway's JWKS),
  never the caller's key nor the identity headers the caller tried to spoof; delegation
  through a received token (`act` chains);
* affinity over two replicas, and other callers' tasks looking missing;
* policy, method allow-lists, unknown methods and versions, quotas, in each binding's shape;
* the push relay's SSRF guard (a gateway without `a2a.push.allow`);
* the catalog, filtered by policy; the audit chain and the conversation view.

Gateways: `gateway` (the main config, `a2a.push.allow: [127.0.0.0/8]` so the local webhook is
reachable) and `strict_gateway` (no push allow list), each started once per module.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest
from a2a.client import A2ACardResolver, Client
from a2a.client.errors import A2AClientError
from a2a.helpers import get_message_text
from a2a.types import (
    AgentCard,
    AuthenticationInfo,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTasksRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import A2AError, InvalidParamsError, MethodNotFoundError, TaskNotFoundError
from a2a.utils.signing import create_signature_verifier
from a2a_probe import Webhook, make_client, send_for_task, send_request, task_text, user_message
from conftest import CONFIG_HEAD, MASTER_KEY, Gateway, _binary, launch_gateway, new_key
from mcp_client_util import free_port
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

pytestmark = pytest.mark.anyio

AGENT_SCRIPT = Path(__file__).resolve().parent / "a2a_agent.py"
TIMEOUT = 15.0
PUSH_TOKEN = "client-push-token"
PUSH_AUTH = ("Bearer", "client-push-secret")

VERSIONS = ["1.0", "0.3"]
BINDINGS = ["JSONRPC", "HTTP+JSON"]
MATRIX = [pytest.param(v, b, id=f"{v}-{b}") for v in VERSIONS for b in BINDINGS]

# Headers a caller might send to pass itself off as someone else upstream.
SPOOFED = {
    "x-tollgate-principal": "master",
    "x-forwarded-user": "mallory",
    "x-user-id": "0",
    "x-tollgate-key-id": "key_admin",
    "x-api-key": "stolen",
}

# Internal webhook targets, in the forms an SSRF attempt would use.
INTERNAL_WEBHOOKS = [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://10.0.0.1/hook",
    "http://192.168.1.1/hook",
    "http://172.16.0.1/hook",
    "http://100.64.0.1/hook",  # carrier-grade NAT
    "http://127.0.0.1/hook",
    "http://2130706433/hook",  # 127.0.0.1 as one decimal number
    "http://0177.0.0.1/hook",  # octal
    "http://0x7f000001/hook",  # hex
    "http://127.1/hook",  # short form
    "http://0.0.0.0/hook",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped
    "http://[fd00::1]/hook",  # unique local
    "http://[fe80::1]/hook",  # link-local
]

CONFIG = CONFIG_HEAD + """\
logging:
  level: warn
a2a:
  push:
    allow: ["127.0.0.0/8"]
  quotas:
    - name: metered-sends
      match: ["metered/SendMessage"]
      per: method
      scope: key
      per_minute: 2
  agents:
    - name: echo
      url: {echo}
    - name: echo2
      url: {echo2}
    - name: pair
      urls: [{pair_a}, {pair_b}]
    - name: guarded
      url: {echo}
    - name: modern
      url: {echo}
    - name: readonly
      url: {echo}
      methods: [GetTask]
    - name: metered
      url: {echo}
    - name: hidden
      url: {echo}
    - name: signed
      url: {signed}
    - name: signed-trusted
      url: {signed}
      trusted_keys: {trusted}
    - name: signed-untrusted
      url: {signed}
      trusted_keys: {untrusted}
policies:
  - name: agents
    applies_to: "request.layer == 'agent'"
    rules:
      - name: no-writes-on-guarded
        when: "request.agent == 'guarded' && request.method in ['SendMessage', 'SendStreamingMessage']"
        action: deny
        reason: guarded agents are read only
      - name: modern-only
        when: "request.agent == 'modern' && request.version == '0.3'"
        action: deny
        reason: speak 1.0 to this agent
      - name: hide-from-outsiders
        when: "request.agent == 'hidden' && principal.team == 'outsiders'"
        action: deny
      - name: everything-else
        when: "true"
        action: allow
"""

STRICT_CONFIG = CONFIG_HEAD + """\
logging:
  level: warn
a2a:
  agents:
    - name: echo
      url: {agent}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- the upstream agents -------------------------------------------------------------------------


@dataclass
class Agent:
    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seen(self) -> list[dict[str, Any]]:
        res = httpx.get(f"{self.url}/_seen", timeout=10)
        res.raise_for_status()
        return res.json()

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_seen", timeout=10).raise_for_status()

    def protocol_calls(self) -> list[dict[str, Any]]:
        """What reached the agent besides card fetches."""
        return [s for s in self.seen() if "agent-card" not in s["path"] and "agent.json" not in s["path"]]



@contextlib.contextmanager
def start_agent(name: str, replica: str = "r1", sign_key: Path | None = None) -> Iterator[Agent]:
    """Runs e2e/a2a_agent.py until the block exits; waits for its `READY <port>` line."""
    port = free_port()
    args = [sys.executable, str(AGENT_SCRIPT), "--port", str(port), "--name", name, "--replica", replica]
    if sign_key is not None:
        args += ["--sign-key", str(sign_key)]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, bufsize=1)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == f"READY {port}":
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while not ready.wait(0.1):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"agent {name} did not start (exit status {proc.poll()})", pytrace=False)
        yield Agent(proc=proc, port=port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    return {"kty": "EC", "crv": "P-256", "x": b64(numbers.x), "y": b64(numbers.y), "kid": kid, "alg": "ES256", "use": "sig"}


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    key = p256_key()
    path = tmp_path_factory.mktemp("a2a-keys") / "agent.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path, key


@pytest.fixture(scope="module")
def agents(signing_key) -> Iterator[dict[str, Agent]]:
    """Every upstream the main gateway fronts, one process each."""
    with contextlib.ExitStack() as stack:
        yield {
            "echo": stack.enter_context(start_agent("echo-agent")),
            "echo2": stack.enter_context(start_agent("echo2-agent", replica="e2")),
            "pair_a": stack.enter_context(start_agent("pair-agent", replica="r1")),
            "pair_b": stack.enter_context(start_agent("pair-agent", replica="r2")),
            "signed": stack.enter_context(start_agent("signed-agent", sign_key=signing_key[0])),
        }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, agents: dict[str, Agent], signing_key) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("tollgate-a2a")
    trusted = {"keys": [public_jwk(signing_key[1], "agent-key-1")]}
    # Same kid, another key: the signature must not verify.
    untrusted = {"keys": [public_jwk(p256_key(), "agent-key-1")]}
    config = CONFIG.format(
        master=MASTER_KEY,
        db=workdir / "tollgate.db",
        echo=agents["echo"].url,
        echo2=agents["echo2"].url,
        pair_a=agents["pair_a"].url,
        pair_b=agents["pair_b"].url,
        signed=agents["signed"].url,
        trusted=json.dumps(trusted),
        untrusted=json.dumps(untrusted),
    )
    with launch_gateway(workdir, config) as gw:
        yield gw


@pytest.fixture(scope="module")
def strict_agent() -> Iterator[Agent]:
    with start_agent("strict-agent") as agent:
        yield agent


@pytest.fixture(scope="module")
def strict_gateway(tmp_path_factory: pytest.TempPathFactory, strict_agent: Agent) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("tollgate-a2a-strict")
    config = STRICT_CONFIG.format(master=MASTER_KEY, db=workdir / "tollgate.db", agent=strict_agent.url)
    with launch_gateway(workdir, config) as gw:
        yield gw


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> dict:
    return new_key(gateway)


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


# --- helpers -------------------------------------------------------------------------------------


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def fetch_card(gw: Gateway, agent: str, secret: str, verifier=None) -> AgentCard:
    async with httpx.AsyncClient(headers=bearer(secret), timeout=TIMEOUT) as http:
        return await A2ACardResolver(http, f"{gw.origin}/a2a/{agent}").get_agent_card(signature_verifier=verifier)


@contextlib.asynccontextmanager
async def sdk_client(
    gw: Gateway,
    agent: str,
    secret: str,
    version: str = "1.0",
    binding: str = "JSONRPC",
    streaming: bool = False,
    extra_headers: dict[str, str] | None = None,
    claim_extended_card: bool = False,
) -> AsyncIterator[Client]:
    """An SDK client for `agent` through the gateway, on the card the gateway serves.

    `claim_extended_card` sets `capabilities.extendedAgentCard` on the client's copy of the card:
    without it the SDK answers GetExtendedAgentCard with the public card and sends nothing."""
    headers = {**bearer(secret), **(extra_headers or {})}
    card = await fetch_card(gw, agent, secret)
    if claim_extended_card:
        card.capabilities.extended_agent_card = True
    async with httpx.AsyncClient(headers=headers, timeout=TIMEOUT) as http:
        yield make_client(card, version, binding, http, streaming=streaming)


def message_json(text: str, version: str, **ids: str) -> dict[str, Any]:
    if version == "0.3":
        m = {"kind": "message", "messageId": str(uuid.uuid4()), "role": "user", "parts": [{"kind": "text", "text": text}]}
    else:
        m = {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"text": text}]}
    return {**m, **ids}


def rpc(
    gw: Gateway, agent: str, secret: str | None, method: str, params: Any, version: str = "1.0", **headers: str
) -> httpx.Response:
    """A raw JSON-RPC call at the gateway's rewritten JSON-RPC URL for `agent`."""
    h = {"A2A-Version": version, "Content-Type": "application/json", **headers}
    if secret is not None:
        h.update(bearer(secret))
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
    return httpx.post(f"{gw.origin}/a2a/{agent}/a2a/jsonrpc", json=body, headers=h, timeout=TIMEOUT)


def rest(gw: Gateway, agent: str, secret: str, method: str, path: str, body: Any = None, version: str = "1.0") -> httpx.Response:
    """A raw HTTP+JSON call; `path` is under the REST interface (`/v1` is added for 0.3)."""
    prefix = "/a2a/rest/v1" if version == "0.3" else "/a2a/rest"
    return httpx.request(
        method,
        f"{gw.origin}/a2a/{agent}{prefix}{path}",
        json=body,
        headers={**bearer(secret), "A2A-Version": version},
        timeout=TIMEOUT,
    )


def send_params(text: str, version: str = "1.0", **ids: str) -> dict[str, Any]:
    return {"message": message_json(text, version, **ids)}


def rpc_error(res: httpx.Response) -> dict[str, Any]:
    body = res.json()
    assert "error" in body, f"expected a JSON-RPC error, got {res.status_code} {res.text}"
    return body["error"]


def error_reason(error: dict[str, Any]) -> str | None:
    """`ErrorInfo.reason` from a 1.0 JSON-RPC error's data or a google.rpc.Status's details."""
    for item in error.get("data") or error.get("details") or []:
        if isinstance(item, dict) and item.get("@type", "").endswith("google.rpc.ErrorInfo"):
            return item.get("reason")
    return None


def jwks(gw: Gateway) -> jwt.PyJWKSet:
    res = httpx.get(f"{gw.origin}/a2a/.well-known/jwks.json", timeout=TIMEOUT)
    assert res.status_code == 200, res.text
    return jwt.PyJWKSet.from_dict(res.json())


def gateway_key(gw: Gateway, kid: str | None) -> jwt.PyJWK:
    matches = [k for k in jwks(gw).keys if k.key_id == kid]
    assert matches, f"kid {kid!r} is not in the gateway's JWKS"
    return matches[0]


def verify_gateway_jwt(gw: Gateway, token: str, audience: str) -> dict[str, Any]:
    """The claims of a token the gateway minted, after checking its ES256 signature."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256", header
    key = gateway_key(gw, header.get("kid"))
    return jwt.decode(token, key.key, algorithms=["ES256"], audience=audience, issuer="tollgate")


def upstream_token(entry: dict[str, Any]) -> str:
    auth = entry["headers"].get("authorization", "")
    assert auth.startswith("Bearer "), entry["headers"]
    return auth.removeprefix("Bearer ")


def audit_records(gw: Gateway) -> list[dict]:
    out = subprocess.run(
        [str(_binary()), "audit", "--config", str(gw.config_path), "export"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    for r in records:
        if isinstance(r.get("detail"), str):
            r["detail"] = json.loads(r["detail"])
        r["detail"] = r.get("detail") or {}
    return records


def a2a_calls(gw: Gateway, **detail: Any) -> list[dict]:
    return [
        r for r in audit_records(gw)
        if r["action"] == "a2a.call" and all(r["detail"].get(k) == v for k, v in detail.items())
    ]


# --- 1. the protocol matrix --------------------------------------------------------------------


async def test_the_card_points_at_the_gateway(gateway: Gateway, agents: dict[str, Agent], key: dict) -> None:
    card = await fetch_card(gateway, "echo", key["secret"])
    urls = {(i.protocol_binding, i.protocol_version): i.url for i in card.supported_interfaces}
    base = f"{gateway.origin}/a2a/echo"
    assert urls == {
        ("JSONRPC", "1.0"): f"{base}/a2a/jsonrpc",
        ("JSONRPC", "0.3"): f"{base}/a2a/jsonrpc",
        ("HTTP+JSON", "1.0"): f"{base}/a2a/rest",
        ("HTTP+JSON", "0.3"): f"{base}/a2a/rest",
    }
    raw = httpx.get(f"{base}/.well-known/agent-card.json", headers=bearer(key["secret"]), timeout=TIMEOUT)
    assert raw.status_code == 200, raw.text
    assert str(agents["echo"].port) not in raw.text, "the agent's own address leaks through the card"
    schemes = raw.json().get("securitySchemes") or {}
    assert schemes, raw.json()
    assert all("bearer" in json.dumps(s).lower() for s in schemes.values()), schemes
    # The legacy path serves the same card; without a credential there is none.
    legacy = httpx.get(f"{base}/.well-known/agent.json", headers=bearer(key["secret"]), timeout=TIMEOUT)
    assert legacy.status_code == 200 and legacy.json()["supportedInterfaces"] == raw.json()["supportedInterfaces"]
    anonymous = httpx.get(f"{base}/.well-known/agent-card.json", timeout=TIMEOUT)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers.get("www-authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("version, binding", MATRIX)
async def test_hello(gateway: Gateway, key: dict, version: str, binding: str) -> None:
    async with sdk_client(gateway, "echo", key["secret"], version, binding) as client:
        task = await send_for_task(client, send_request(user_message("hello")))
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task_text(task) == "echo: hello from r1"


@pytest.mark.parametrize("version, binding", MATRIX)
async def test_streaming_is_not_buffered(gateway: Gateway, key: dict, version: str, binding: str) -> None:
    """`slow 5` emits an artifact chunk every ~200 ms; each must reach the client as it is sent."""
    arrivals: list[float] = []
    states: list[int] = []
    async with sdk_client(gateway, "echo", key["secret"], version, binding, streaming=True) as client:
        async for event in client.send_message(send_request(user_message("slow 5"))):
            if event.HasField("artifact_update"):
                arrivals.append(time.monotonic())
            elif event.HasField("status_update"):
                states.append(event.status_update.status.state)
        end = time.monotonic()
    assert len(arrivals) == 5, f"{len(arrivals)} artifact updates"
    # Four gaps of ~200 ms: a buffered stream would deliver them all at once at the end.
    assert arrivals[-1] - arrivals[0] >= 0.5, f"chunks arrived within {arrivals[-1] - arrivals[0]:.3f}s"
    assert end - arrivals[0] >= 0.5, "the first chunk arrived only when the stream ended"
    assert states[-1] == TaskState.TASK_STATE_COMPLETED


@pytest.mark.parametrize("version, binding", MATRIX)
async def test_get_task(gateway: Gateway, key: dict, version: str, binding: str) -> None:
    async with sdk_client(gateway, "echo", key["secret"], version, binding) as client:
        sent = await send_for_task(client, send_request(user_message("slow 2")))
        got = await client.get_task(GetTaskRequest(id=sent.id))
    assert got.id == sent.id and got.context_id == sent.context_id
    assert got.status.state == TaskState.TASK_STATE_COMPLETED
    assert task_text(got) == "chunk 1/2 chunk 2/2 "


@pytest.mark.parametrize("version, binding", MATRIX)
async def test_multi_turn(gateway: Gateway, key: dict, version: str, binding: str) -> None:
    async with sdk_client(gateway, "echo", key["secret"], version, binding) as client:
        first = await send_for_task(client, send_request(user_message("ask")))
        assert first.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        follow_up = user_message("42", task_id=first.id, context_id=first.context_id)
        second = await send_for_task(client, send_request(follow_up))
    assert second.id == first.id and second.context_id == first.context_id
    assert second.status.state == TaskState.TASK_STATE_COMPLETED
    assert task_text(second) == "got '42' for 'ask' from r1"


@pytest.mark.parametrize("version, binding", MATRIX)
async def test_cancel(gateway: Gateway, key: dict, version: str, binding: str) -> None:
    async with sdk_client(gateway, "echo", key["secret"], version, binding) as client:
        task = await send_for_task(client, send_request(user_message("wait"), return_immediately=True))
        assert task.status.state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING)
        canceled = await client.cancel_task(CancelTaskRequest(id=task.id))
        assert canceled.status.state == TaskState.TASK_STATE_CANCELED
        again = await client.get_task(GetTaskRequest(id=task.id))
    assert again.status.state == TaskState.TASK_STATE_CANCELED


@pytest.mark.parametrize("version, binding", MATRIX)
async def test_push_is_relayed_with_the_clients_token_and_auth(
    gateway: Gateway, agents: dict[str, Agent], key: dict, webhook: Webhook, version: str, binding: str
) -> None:
    async with sdk_client(gateway, "echo", key["secret"], version, binding) as client:
        task = await send_for_task(client, send_request(user_message("slow 3"), return_immediately=True))
        config = TaskPushNotificationConfig(
            task_id=task.id,
            url=webhook.url,
            token=PUSH_TOKEN,
            authentication=AuthenticationInfo(scheme=PUSH_AUTH[0], credentials=PUSH_AUTH[1]),
        )
        stored = await client.create_task_push_notification_config(config)
        assert stored.task_id == task.id
        headers, body = await webhook.wait_for(task.id, "TASK_STATE_COMPLETED")
    assert headers.get("x-a2a-notification-token") == PUSH_TOKEN
    assert headers.get("authorization") == f"{PUSH_AUTH[0]} {PUSH_AUTH[1]}"
    # The agent was given the gateway's callback and a token of its own, never the client's.
    registrations = [
        s for s in agents["echo"].protocol_calls()
        if task.id in s["body"] + s["path"] and "pushnotificationconfig" in (s["body"] + s["path"]).lower()
    ]
    assert registrations, "the push registration never reached the agent"
    for r in registrations:
        assert webhook.url not in r["body"] and PUSH_TOKEN not in r["body"] and PUSH_AUTH[1] not in r["body"]
        assert "/a2a/_push/" in r["body"], r["body"]


async def test_push_without_client_auth_carries_a_gateway_token(
    gateway: Gateway, key: dict, webhook: Webhook
) -> None:
    async with sdk_client(gateway, "echo", key["secret"]) as client:
        task = await send_for_task(client, send_request(user_message("slow 2"), return_immediately=True))
        await client.create_task_push_notification_config(
            TaskPushNotificationConfig(task_id=task.id, url=webhook.url, token=PUSH_TOKEN)
        )
        headers, _ = await webhook.wait_for(task.id, "TASK_STATE_COMPLETED")
    assert headers.get("x-a2a-notification-token") == PUSH_TOKEN
    token = headers.get("authorization", "").removeprefix("Bearer ")
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, gateway_key(gateway, header.get("kid")).key, algorithms=["ES256"], audience=webhook.url)
    assert claims["iss"] == "tollgate"

    def pushed() -> dict:
        found = [
            r for r in audit_records(gateway)
            if r["action"] == "a2a.push" and r["detail"].get("task_id") == task.id
            and r["detail"].get("task_state") == "TASK_STATE_COMPLETED"
        ]
        assert found
        return found[-1]

    record = eventually(pushed)
    assert record["outcome"] == "success" and record["target"] == "echo"
    assert record["principal"] == key["key"]["id"] and record["conversation_id"] == task.context_id
    assert record["detail"]["url"] == webhook.url and record["detail"]["attempts"] == 1


# --- 2. identity -------------------------------------------------------------------------------


async def test_the_agent_sees_a_gateway_token_not_the_caller(
    gateway: Gateway, agents: dict[str, Agent], key: dict
) -> None:
    echo = agents["echo"]
    echo.clear()
    trace_id = uuid.uuid4().hex
    spoofing = {**SPOOFED, "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}
    async with sdk_client(gateway, "echo", key["secret"], extra_headers=spoofing) as client:
        task = await send_for_task(client, send_request(user_message("hello")))
    calls = [s for s in echo.protocol_calls() if s["path"] == "/a2a/jsonrpc"]
    assert len(calls) == 1, calls
    seen = calls[0]["headers"]
    assert key["secret"] not in json.dumps(calls[0]), "the caller's key reached the agent"
    claims = verify_gateway_jwt(gateway, upstream_token(calls[0]), audience="echo")
    assert claims["sub"] == key["key"]["id"]
    assert claims["name"] == key["key"]["name"]
    assert "act" not in claims
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] <= time.time() + 5
    assert claims["jti"]
    # The trace continues; the conversation is named; the spoofed identity headers are gone.
    assert seen["traceparent"].split("-")[1] == trace_id, seen
    assert seen.get("x-request-id")
    assert seen.get("x-tollgate-conversation-id") in (task.context_id, None)
    for name in SPOOFED:
        assert name not in seen, f"{name} reached the agent: {seen}"


async def test_each_call_gets_a_fresh_token_with_the_context(gateway: Gateway, agents: dict[str, Agent], key: dict) -> None:
    echo = agents["echo"]
    async with sdk_client(gateway, "echo", key["secret"]) as client:
        first = await send_for_task(client, send_request(user_message("ask")))
        echo.clear()
        await send_for_task(client, send_request(user_message("yes", task_id=first.id, context_id=first.context_id)))
    calls = [s for s in echo.protocol_calls() if s["path"] == "/a2a/jsonrpc"]
    assert len(calls) == 1
    assert calls[0]["headers"].get("x-tollgate-conversation-id") == first.context_id, calls[0]["headers"]


async def test_the_master_key_is_subject_master(gateway: Gateway, agents: dict[str, Agent]) -> None:
    echo = agents["echo"]
    echo.clear()
    async with sdk_client(gateway, "echo", MASTER_KEY) as client:
        await send_for_task(client, send_request(user_message("hello")))
    (call,) = [s for s in echo.protocol_calls() if s["path"] == "/a2a/jsonrpc"]
    assert MASTER_KEY not in json.dumps(call)
    assert verify_gateway_jwt(gateway, upstream_token(call), audience="echo")["sub"] == "master"


# --- 3. delegation ------------------------------------------------------------------------------


async def test_an_agent_calls_another_with_the_token_it_received(
    gateway: Gateway, agents: dict[str, Agent], key: dict
) -> None:
    echo, echo2 = agents["echo"], agents["echo2"]
    echo.clear()
    async with sdk_client(gateway, "echo", key["secret"]) as client:
        await send_for_task(client, send_request(user_message("hello")))
    (received,) = [s for s in echo.protocol_calls() if s["path"] == "/a2a/jsonrpc"]
    echo_token = upstream_token(received)

    # echo, acting for the caller, calls echo2 through the gateway with that token.
    echo2.clear()
    async with sdk_client(gateway, "echo2", echo_token) as client:
        task = await send_for_task(client, send_request(user_message("hello")))
    assert task_text(task) == "echo: hello from e2"
    (delegated,) = [s for s in echo2.protocol_calls() if s["path"] == "/a2a/jsonrpc"]
    assert echo_token not in json.dumps(delegated)
    claims = verify_gateway_jwt(gateway, upstream_token(delegated), audience="echo2")
    assert claims["sub"] == key["key"]["id"]
    assert claims["act"] == {"sub": "echo"}

    # One more hop: echo2 calls echo back; the chain nests, the current actor outermost.
    echo.clear()
    async with sdk_client(gateway, "echo", upstream_token(delegated)) as client:
        await send_for_task(client, send_request(user_message("hello")))
    (back,) = [s for s in echo.protocol_calls() if s["path"] == "/a2a/jsonrpc"]
    claims = verify_gateway_jwt(gateway, upstream_token(back), audience="echo")
    assert claims["sub"] == key["key"]["id"]
    assert claims["act"] == {"sub": "echo2", "act": {"sub": "echo"}}

    def audited() -> dict:
        found = a2a_calls(gateway, agent="echo2", task_id=task.id)
        assert found
        return found[-1]

    record = eventually(audited)
    assert record["detail"]["subject"] == key["key"]["id"]
    assert record["detail"]["actors"] == ["echo"]


async def test_a_forged_or_foreign_token_is_refused(gateway: Gateway, agents: dict[str, Agent]) -> None:
    forged_key = p256_key()
    forged = jwt.encode(
        {"iss": "tollgate", "aud": "echo", "sub": "key_someone", "exp": int(time.time()) + 60},
        forged_key,
        algorithm="ES256",
        # The gateway's own kid, signed with another key.
        headers={"kid": jwks(gateway).keys[0].key_id},
    )
    res = rpc(gateway, "echo2", forged, "SendMessage", send_params("hello"))
    assert res.status_code == 401, res.text
    assert rpc_error(res)["code"] == -32050


# --- 4. affinity ---------------------------------------------------------------------------------


async def test_new_conversations_spread_over_the_replicas(gateway: Gateway, key: dict) -> None:
    async with sdk_client(gateway, "pair", key["secret"]) as client:
        replies = [task_text(await send_for_task(client, send_request(user_message("hello")))) for _ in range(4)]
    assert {r.rsplit(" ", 1)[-1] for r in replies} == {"r1", "r2"}, replies


async def test_follow_ups_stay_on_the_replica_that_owns_the_task(gateway: Gateway, key: dict) -> None:
    async with sdk_client(gateway, "pair", key["secret"]) as client:
        asks = [await send_for_task(client, send_request(user_message("ask"))) for _ in range(2)]
        owners = [get_message_text(a.status.message).rsplit("(", 1)[-1].rstrip(")") for a in asks]
        assert set(owners) == {"r1", "r2"}, owners
        for ask, owner in zip(asks, owners):
            # Some other calls in between move the round robin on.
            await send_for_task(client, send_request(user_message("hello")))
            done = await send_for_task(
                client, send_request(user_message("yes", task_id=ask.id, context_id=ask.context_id))
            )
            assert task_text(done) == f"got 'yes' for 'ask' from {owner}"
            got = await client.get_task(GetTaskRequest(id=ask.id))
            assert got.status.state == TaskState.TASK_STATE_COMPLETED


@pytest.mark.parametrize("version", VERSIONS)
async def test_another_callers_task_is_not_found(gateway: Gateway, key: dict, version: str) -> None:
    async with sdk_client(gateway, "pair", key["secret"]) as client:
        task = await send_for_task(client, send_request(user_message("ask")))
    other = new_key(gateway)["secret"]
    get = rpc(gateway, "pair", other, "GetTask" if version == "1.0" else "tasks/get", {"id": task.id}, version)
    assert rpc_error(get)["code"] == -32001, get.text
    follow_up = rpc(
        gateway, "pair", other, "SendMessage" if version == "1.0" else "message/send",
        send_params("hijack", version, taskId=task.id, contextId=task.context_id), version,
    )
    assert rpc_error(follow_up)["code"] == -32001, follow_up.text
    # The SDK sees its own TaskNotFoundError, as for a task that does not exist.
    async with sdk_client(gateway, "pair", other, version) as client:
        with pytest.raises(TaskNotFoundError):
            await client.get_task(GetTaskRequest(id=task.id))


# --- 5. signed cards ------------------------------------------------------------------------------


def gateway_verifier(gw: Gateway):
    def provider(kid: str | None, jku: str | None):
        assert jku == f"{gw.origin}/a2a/.well-known/jwks.json", jku
        return gateway_key(gw, kid)

    return create_signature_verifier(provider, ["ES256"])


@pytest.mark.parametrize("agent", ["signed", "signed-trusted"])
async def test_a_signed_card_is_re_signed_by_the_gateway(gateway: Gateway, key: dict, agent: str) -> None:
    card = await fetch_card(gateway, agent, key["secret"], verifier=gateway_verifier(gateway))
    assert card.signatures
    assert all(i.url.startswith(f"{gateway.origin}/a2a/{agent}/") for i in card.supported_interfaces)
    kids = {json.loads(base64.urlsafe_b64decode(s.protected + "==")).get("kid") for s in card.signatures}
    assert "agent-key-1" not in kids, "the agent's own signature no longer matches the rewritten card"
    # The SDK client works on that card.
    async with sdk_client(gateway, agent, key["secret"]) as client:
        task = await send_for_task(client, send_request(user_message("hello")))
    assert task_text(task) == "echo: hello from r1"


async def test_a_card_signed_by_an_untrusted_key_is_refused(gateway: Gateway, key: dict) -> None:
    res = httpx.get(
        f"{gateway.origin}/a2a/signed-untrusted/.well-known/agent-card.json",
        headers=bearer(key["secret"]),
        timeout=TIMEOUT,
    )
    assert res.status_code == 502, res.text
    assert res.json()["error"]["message"], res.text

    def rejected() -> None:
        assert any(
            r["action"] == "a2a.card.rejected" and r["target"] == "signed-untrusted" for r in audit_records(gateway)
        )

    eventually(rejected)


# --- 6. policy, allow-lists, protocol errors, quotas ---------------------------------------------


@pytest.mark.parametrize("version, method", [("1.0", "SendMessage"), ("0.3", "message/send")])
def test_policy_denial_in_json_rpc(gateway: Gateway, agents: dict[str, Agent], key: dict, version: str, method: str) -> None:
    agents["echo"].clear()
    res = rpc(gateway, "guarded", key["secret"], method, send_params("hello", version), version)
    assert res.status_code == 403, res.text
    error = rpc_error(res)
    assert error["code"] == -32050
    assert "agents/no-writes-on-guarded" in error["message"] and "read only" in error["message"]
    if version == "1.0":
        assert error_reason(error) == "PERMISSION_DENIED", error
    assert res.json()["id"] == 7
    assert agents["echo"].protocol_calls() == [], "a denied call reached the agent"


@pytest.mark.parametrize("version", VERSIONS)
def test_policy_denial_in_rest(gateway: Gateway, agents: dict[str, Agent], key: dict, version: str) -> None:
    agents["echo"].clear()
    res = rest(gateway, "guarded", key["secret"], "POST", "/message:send", send_params("hello", version), version)
    assert res.status_code == 403, res.text
    error = res.json()["error"]
    assert error["code"] == 403 and error["status"] == "PERMISSION_DENIED"
    assert "agents/no-writes-on-guarded" in error["message"]
    assert error_reason(error) == "PERMISSION_DENIED"
    assert agents["echo"].protocol_calls() == []


def test_policy_sees_the_protocol_version(gateway: Gateway, key: dict) -> None:
    old = rpc(gateway, "modern", key["secret"], "message/send", send_params("hello", "0.3"), "0.3")
    assert old.status_code == 403 and "speak 1.0" in rpc_error(old)["message"], old.text
    new = rpc(gateway, "modern", key["secret"], "SendMessage", send_params("hello"), "1.0")
    assert new.status_code == 200, new.text
    assert new.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED", new.text


@pytest.mark.parametrize("version, binding", MATRIX)
async def test_a_denied_call_is_an_error_in_the_sdk(gateway: Gateway, key: dict, version: str, binding: str) -> None:
    # The refusal keeps its HTTP 403, so the SDK reports the HTTP error (not the JSON-RPC one).
    async with sdk_client(gateway, "guarded", key["secret"], version, binding) as client:
        with pytest.raises(A2AClientError, match="403"):
            await send_for_task(client, send_request(user_message("hello")))


def test_the_method_allow_list(gateway: Gateway, key: dict) -> None:
    res = rpc(gateway, "readonly", key["secret"], "SendMessage", send_params("hello"))
    assert res.status_code == 403, res.text
    assert rpc_error(res)["code"] == -32050 and "not among the operations allowed" in rpc_error(res)["message"]
    res = rest(gateway, "readonly", key["secret"], "POST", "/message:send", send_params("hello"))
    assert res.status_code == 403 and res.json()["error"]["status"] == "PERMISSION_DENIED", res.text
    # An allowed method goes through (to the agent's own answer for a task it does not have).
    res = rpc(gateway, "readonly", key["secret"], "GetTask", {"id": "no-such-task"})
    assert rpc_error(res)["code"] == -32001, res.text


def test_unknown_methods_and_versions(gateway: Gateway, agents: dict[str, Agent], key: dict) -> None:
    agents["echo"].clear()
    res = rpc(gateway, "echo", key["secret"], "tasks/frobnicate", {})
    assert res.status_code == 200 and rpc_error(res)["code"] == -32601, res.text
    res = rpc(gateway, "echo", key["secret"], "SendMessage", send_params("hello"), version="9.9")
    assert rpc_error(res)["code"] == -32009, res.text
    res = rest(gateway, "echo", key["secret"], "POST", "/message:send", send_params("hello"), version="9.9")
    assert res.status_code == 400 and error_reason(res.json()["error"]) == "VERSION_NOT_SUPPORTED", res.text
    res = rpc(gateway, "nobody", key["secret"], "SendMessage", send_params("hello"))
    assert res.status_code == 404, res.text
    assert agents["echo"].protocol_calls() == []


def test_calls_need_a_credential(gateway: Gateway, agents: dict[str, Agent]) -> None:
    agents["echo"].clear()
    for secret in (None, "tg-not-a-key"):
        res = rpc(gateway, "echo", secret, "SendMessage", send_params("hello"))
        assert res.status_code == 401, res.text
        assert rpc_error(res)["code"] == -32050
        assert res.headers.get("www-authenticate", "").startswith("Bearer")
    assert agents["echo"].protocol_calls() == []


@pytest.mark.parametrize("version, method", [("1.0", "SendMessage"), ("0.3", "message/send")])
def test_quota_in_json_rpc(gateway: Gateway, version: str, method: str) -> None:
    secret = new_key(gateway)["secret"]
    for _ in range(2):
        ok = rpc(gateway, "metered", secret, method, send_params("hello", version), version)
        assert ok.status_code == 200 and "result" in ok.json(), ok.text
    res = rpc(gateway, "metered", secret, method, send_params("hello", version), version)
    assert res.status_code == 429, res.text
    error = rpc_error(res)
    assert error["code"] == -32050 and "metered-sends" in error["message"]
    if version == "0.3":
        assert error["data"]["retryAfterSeconds"] >= 1, error
    else:
        (info,) = error["data"]
        assert info["reason"] == "RESOURCE_EXHAUSTED" and int(info["metadata"]["retryAfterSeconds"]) >= 1, error
    assert int(res.headers["retry-after"]) >= 1
    # Other methods on the agent, and other keys, are not counted.
    assert rpc(gateway, "metered", secret, "GetTask" if version == "1.0" else "tasks/get", {"id": "x"}, version).status_code == 200
    other = new_key(gateway)["secret"]
    assert rpc(gateway, "metered", other, method, send_params("hello", version), version).status_code == 200


def test_quota_in_rest(gateway: Gateway) -> None:
    secret = new_key(gateway)["secret"]
    for _ in range(2):
        ok = rest(gateway, "metered", secret, "POST", "/message:send", send_params("hello"))
        assert ok.status_code == 200, ok.text
    res = rest(gateway, "metered", secret, "POST", "/message:send", send_params("hello"))
    assert res.status_code == 429, res.text
    error = res.json()["error"]
    assert error["code"] == 429 and error["status"] == "RESOURCE_EXHAUSTED"


def test_a_denied_call_is_audited(gateway: Gateway, key: dict) -> None:
    rpc(gateway, "guarded", key["secret"], "SendMessage", send_params("hello"))

    def denied() -> dict:
        found = [r for r in a2a_calls(gateway, agent="guarded") if r["decision"] == "deny"]
        assert found
        return found[-1]

    record = eventually(denied)
    assert record["rule"] == "agents/no-writes-on-guarded"
    assert record["outcome"] == "denied"
    assert record["detail"]["method"] == "SendMessage" and record["detail"]["status"] == 403


# --- 7. the push relay's SSRF guard ----------------------------------------------------------------


def test_internal_webhooks_are_refused_and_never_reach_the_agent(strict_gateway: Gateway, strict_agent: Agent) -> None:
    secret = new_key(strict_gateway)["secret"]
    started = rpc(strict_gateway, "echo", secret, "SendMessage", {
        **send_params("wait"), "configuration": {"returnImmediately": True},
    })
    task_id = started.json()["result"]["task"]["id"]
    strict_agent.clear()
    refused: dict[str, list[str]] = {}
    for url in INTERNAL_WEBHOOKS:
        attempts = {
            "1.0 create": rpc(strict_gateway, "echo", secret, "CreateTaskPushNotificationConfig",
                              {"taskId": task_id, "url": url, "token": "t"}),
            "0.3 set": rpc(strict_gateway, "echo", secret, "tasks/pushNotificationConfig/set",
                           {"taskId": task_id, "pushNotificationConfig": {"url": url, "token": "t"}}, "0.3"),
            "1.0 inline": rpc(strict_gateway, "echo", secret, "SendMessage", {
                **send_params("hello"), "configuration": {"taskPushNotificationConfig": {"url": url}},
            }),
            "0.3 inline": rpc(strict_gateway, "echo", secret, "message/send", {
                **send_params("hello", "0.3"), "configuration": {"pushNotificationConfig": {"url": url}},
            }, "0.3"),
        }
        for what, res in attempts.items():
            error = rpc_error(res)
            assert error["code"] == -32602, f"{what} {url}: {res.text}"
            if what.startswith("1.0"):
                assert error_reason(error) == "PUSH_URL_REFUSED", f"{what} {url}: {res.text}"
            refused.setdefault(url, []).append(what)
        res = rest(strict_gateway, "echo", secret, "POST", f"/tasks/{task_id}/pushNotificationConfigs",
                   {"taskId": task_id, "url": url, "token": "t"})
        assert res.status_code == 400 and error_reason(res.json()["error"]) == "PUSH_URL_REFUSED", f"REST {url}: {res.text}"
    assert len(refused) >= 10
    reached = [s for s in strict_agent.seen() if any(u.split("//")[1].split("/")[0] in s["body"] for u in INTERNAL_WEBHOOKS)]
    assert reached == [], f"internal webhook URLs reached the agent: {reached}"
    assert strict_agent.protocol_calls() == [], "a refused registration reached the agent"
    # The agent has no push config for the task.
    listed = rpc(strict_gateway, "echo", secret, "ListTaskPushNotificationConfigs", {"taskId": task_id})
    assert listed.status_code == 200, listed.text
    assert not (listed.json().get("result") or {}).get("configs"), listed.text
    rpc(strict_gateway, "echo", secret, "CancelTask", {"id": task_id})


def test_snake_case_push_configs_are_screened_too(strict_gateway: Gateway, strict_agent: Agent) -> None:
    """The SDK's ProtoJSON parser accepts field names in snake_case as well as camelCase, so an
    inline config the gateway does not recognise would reach the agent unscreened."""
    secret = new_key(strict_gateway)["secret"]
    strict_agent.clear()
    res = rpc(strict_gateway, "echo", secret, "SendMessage", {
        **send_params("hello"),
        "configuration": {"task_push_notification_config": {"url": "http://169.254.169.254/latest/"}},
    })
    reached = [s for s in strict_agent.protocol_calls() if "169.254.169.254" in s["body"]]
    assert reached == [], f"the internal webhook reached the agent ({res.status_code} {res.text})"


@pytest.mark.parametrize("version, binding", MATRIX)
async def test_the_sdk_cannot_register_an_internal_webhook(
    strict_gateway: Gateway, strict_agent: Agent, version: str, binding: str
) -> None:
    """Each SDK transport's own wire shape for a push registration is screened."""
    secret = new_key(strict_gateway)["secret"]
    async with sdk_client(strict_gateway, "echo", secret, version, binding) as client:
        task = await send_for_task(client, send_request(user_message("hello")))
        strict_agent.clear()
        with pytest.raises(A2AError) as caught:
            await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task.id, url="http://169.254.169.254/latest/", token="t")
            )
    reached = [s for s in strict_agent.protocol_calls() if "169.254.169.254" in s["body"]]
    assert reached == [], f"the internal webhook reached the agent: {reached}"
    if binding == "JSONRPC":
        assert isinstance(caught.value, InvalidParamsError), repr(caught.value)
    else:
        assert "400" in str(caught.value), repr(caught.value)


# --- 8. the catalog ------------------------------------------------------------------------------


def catalog(gw: Gateway, secret: str) -> dict[str, dict]:
    res = httpx.get(f"{gw.origin}/a2a/agents", headers=bearer(secret), timeout=TIMEOUT)
    assert res.status_code == 200, res.text
    return {a["name"]: a for a in res.json()["agents"]}


def team_key(gw: Gateway, team: str) -> str:
    """A key of `team`, creating the team first (keys may only name existing teams)."""
    res = gw.admin("POST", "/admin/v1/teams", json={"id": team})
    assert res.status_code in (201, 409), res.text
    return new_key(gw, team=team)["secret"]


def test_the_catalog_lists_what_the_caller_may_see(gateway: Gateway, key: dict) -> None:
    seen = catalog(gateway, key["secret"])
    assert {"echo", "echo2", "pair", "hidden", "signed"} <= set(seen)
    echo = seen["echo"]
    assert echo["url"] == f"{gateway.origin}/a2a/echo"
    assert echo["card_url"] == f"{gateway.origin}/a2a/echo/.well-known/agent-card.json"
    assert echo["card"]["name"] == "echo-agent"
    assert all(i["url"].startswith(echo["url"] + "/") for i in echo["card"]["supportedInterfaces"])
    # A card the gateway refuses shows as an error, not as a card.
    assert "card" not in seen["signed-untrusted"] and seen["signed-untrusted"]["error"]

    outsider = team_key(gateway, "outsiders")
    assert "hidden" not in catalog(gateway, outsider)
    assert "echo" in catalog(gateway, outsider)
    card = httpx.get(f"{gateway.origin}/a2a/hidden/.well-known/agent-card.json", headers=bearer(outsider), timeout=TIMEOUT)
    assert card.status_code == 404, card.text
    call = rpc(gateway, "hidden", outsider, "SendMessage", send_params("hello"))
    assert call.status_code == 403, call.text
    insider = team_key(gateway, "insiders")
    assert "hidden" in catalog(gateway, insider)
    assert httpx.get(f"{gateway.origin}/a2a/agents", timeout=TIMEOUT).status_code == 401


# --- audit and the conversation view --------------------------------------------------------------


async def test_calls_are_audited(gateway: Gateway, key: dict) -> None:
    async with sdk_client(gateway, "echo", key["secret"], "0.3", "HTTP+JSON") as client:
        task = await send_for_task(client, send_request(user_message("hello")))

    def recorded() -> dict:
        found = a2a_calls(gateway, task_id=task.id)
        assert found
        return found[-1]

    record = eventually(recorded)
    assert record["principal"] == key["key"]["id"] and record["target"] == "echo/SendMessage"
    assert record["decision"] == "allow" and record["outcome"] == "success"
    detail = record["detail"]
    assert detail["agent"] == "echo" and detail["method"] == "SendMessage"
    assert detail["version"] == "0.3" and detail["binding"] == "HTTP+JSON"
    assert detail["wire_method"].startswith("POST ") and detail["wire_method"].endswith("message:send")
    assert detail["subject"] == key["key"]["id"] and detail["actors"] == []
    assert detail["context_id"] == task.context_id and detail["replica"] == 0
    assert detail["task_state"] == "TASK_STATE_COMPLETED" and detail["status"] == 200


async def test_the_conversation_view(gateway: Gateway, key: dict) -> None:
    """Written ahead of GET /admin/v1/conversations/{id}: adjust when the endpoint lands."""
    async with sdk_client(gateway, "echo", key["secret"]) as client:
        first = await send_for_task(client, send_request(user_message("ask")))
        await send_for_task(client, send_request(user_message("7", task_id=first.id, context_id=first.context_id)))
        await client.get_task(GetTaskRequest(id=first.id))

    def view() -> dict:
        res = gateway.admin("GET", f"/admin/v1/conversations/{first.context_id}")
        assert res.status_code == 200, res.text
        body = res.json()
        assert len(body["agent_calls"]) >= 3, body
        return body

    body = eventually(view)
    assert body["conversation_id"] == first.context_id
    calls = body["agent_calls"]
    assert [c["detail"]["method"] for c in calls] == ["SendMessage", "SendMessage", "GetTask"], calls
    assert all(c["action"] == "a2a.call" and c["principal"] == key["key"]["id"] for c in calls)
    assert all(c["detail"]["context_id"] == first.context_id for c in calls)
    assert [c["seq"] for c in calls] == sorted(c["seq"] for c in calls)
    assert {"seq", "time_ms", "action", "principal", "target", "decision", "outcome", "detail"} <= set(calls[0])
    assert body["tool_calls"] == [] and body["model_calls"] == []
    assert isinstance(body["totals"], dict)
    # The view is the master key's.
    assert httpx.get(
        f"{gateway.origin}/admin/v1/conversations/{first.context_id}", headers=bearer(key["secret"]), timeout=TIMEOUT
    ).status_code in (401, 403)


# --- 9. subscribe, list, push config management, the extended card ------------------------------


def states_of(events: list[StreamResponse]) -> list[int]:
    """The task states a stream reported, in order (from Tasks and status updates)."""
    out = []
    for e in events:
        if e.HasField("task"):
            out.append(e.task.status.state)
        elif e.HasField("status_update"):
            out.append(e.status_update.status.state)
    return out


@pytest.mark.parametrize("version, binding", MATRIX)
async def test_subscribe_to_a_running_task(gateway: Gateway, key: dict, version: str, binding: str) -> None:
    """SubscribeToTask (0.3 `tasks/resubscribe`): the current Task first, then the task's events
    until it ends; here a cancel made by another call."""
    async with (
        sdk_client(gateway, "echo", key["secret"], version, binding) as client,
        sdk_client(gateway, "echo", key["secret"], version, binding, streaming=True) as streaming,
    ):
        task = await send_for_task(client, send_request(user_message("wait"), return_immediately=True))
        events = streaming.subscribe(SubscribeToTaskRequest(id=task.id))
        with anyio.fail_after(TIMEOUT):
            first = await anext(events)
            # The spec: the stream MUST start with the current Task.
            assert first.HasField("task"), f"the first event is not the Task: {first}"
            assert first.task.id == task.id and first.task.context_id == task.context_id
            assert first.task.status.state == TaskState.TASK_STATE_WORKING, first
            # The SDK agent attaches to the task's queue just after yielding that Task.
            await anyio.sleep(0.3)
            canceled = await client.cancel_task(CancelTaskRequest(id=task.id))
            assert canceled.status.state == TaskState.TASK_STATE_CANCELED
            rest = [e async for e in events]  # and the stream ends
    assert states_of(rest)[-1:] == [TaskState.TASK_STATE_CANCELED], [str(e) for e in rest]
    assert all(
        (e.task.id if e.HasField("task") else e.status_update.task_id or e.artifact_update.task_id) == task.id
        for e in rest
    ), rest


@pytest.mark.parametrize("version, binding", MATRIX)
async def test_subscribing_to_another_callers_task_is_task_not_found(
    gateway: Gateway, agents: dict[str, Agent], key: dict, version: str, binding: str
) -> None:
    async with sdk_client(gateway, "echo", key["secret"], version, binding) as client:
        task = await send_for_task(client, send_request(user_message("wait"), return_immediately=True))
        other = new_key(gateway)["secret"]
        agents["echo"].clear()
        # The SDK's 0.3 HTTP+JSON transport reads errors from a `type` field that neither the
        # SDK agent nor the gateway send: any 404 is MethodNotFoundError("Resource not found")
        # to it, as for a missing task straight from the agent. The wire answer is checked below.
        expected = MethodNotFoundError if (version, binding) == ("0.3", "HTTP+JSON") else TaskNotFoundError
        try:
            async with sdk_client(gateway, "echo", other, version, binding, streaming=True) as streaming:
                with anyio.fail_after(TIMEOUT), pytest.raises(expected):
                    async for event in streaming.subscribe(SubscribeToTaskRequest(id=task.id)):
                        pytest.fail(f"another caller's subscription yielded {event}")
            if binding == "HTTP+JSON":
                res = rest(gateway, "echo", other, "POST", f"/tasks/{task.id}:subscribe", version=version)
                assert res.status_code == 404, res.text
                assert error_reason(res.json()["error"]) == "TASK_NOT_FOUND", res.text
            else:
                method = "SubscribeToTask" if version == "1.0" else "tasks/resubscribe"
                res = rpc(gateway, "echo", other, method, {"id": task.id}, version)
                assert rpc_error(res)["code"] == -32001, res.text
        finally:
            await client.cancel_task(CancelTaskRequest(id=task.id))
    assert [s for s in agents["echo"].protocol_calls() if "subscribe" in (s["path"] + s["body"]).lower()] == []


@pytest.mark.parametrize("binding", BINDINGS)
async def test_list_tasks_in_a_context(gateway: Gateway, key: dict, binding: str) -> None:
    """ListTasks (1.0 only: the SDK's 0.3 transports have no tasks/list, nor has 0.3 itself).
    On `pair`, so the listing must go to the replica that holds the conversation, every time."""
    async with sdk_client(gateway, "pair", key["secret"], "1.0", binding) as client:
        first = await send_for_task(client, send_request(user_message("hello")))
        second = await send_for_task(client, send_request(user_message("hello again", context_id=first.context_id)))
        assert second.context_id == first.context_id and second.id != first.id
        for attempt in range(2):  # the round robin moves on between the two
            listed = await client.list_tasks(ListTasksRequest(context_id=first.context_id))
            assert {t.id for t in listed.tasks} == {first.id, second.id}, (
                f"listing {attempt + 1} of the context's tasks: {[t.id for t in listed.tasks]} (the replica "
                f"holding the context is {task_text(first).rsplit(' ', 1)[-1]})"
            )
            assert all(t.context_id == first.context_id for t in listed.tasks)
            assert all(t.status.state == TaskState.TASK_STATE_COMPLETED for t in listed.tasks)


@pytest.mark.parametrize("binding", BINDINGS)
async def test_list_tasks_shows_only_the_callers_tasks(gateway: Gateway, key: dict, binding: str) -> None:
    """Other callers' tasks look missing (as for GetTask), in an unfiltered listing as well."""
    async with sdk_client(gateway, "echo", key["secret"], "1.0", binding) as client:
        mine = await send_for_task(client, send_request(user_message("hello")))
        listed = await client.list_tasks(ListTasksRequest())
        assert mine.id in {t.id for t in listed.tasks}, listed
    async with sdk_client(gateway, "echo", new_key(gateway)["secret"], "1.0", binding) as client:
        # Filtered by the first caller's context: nothing, or the not-found answer.
        try:
            listed = await client.list_tasks(ListTasksRequest(context_id=mine.context_id))
        except TaskNotFoundError:
            pass
        else:
            assert mine.id not in {t.id for t in listed.tasks}, "another caller's task is listed (by its context)"
        listed = await client.list_tasks(ListTasksRequest())
        assert mine.id not in {t.id for t in listed.tasks}, "another caller's task is listed (no filter)"


@pytest.mark.parametrize("version, binding", MATRIX)
async def test_push_configs_get_list_delete(
    gateway: Gateway, key: dict, webhook: Webhook, version: str, binding: str
) -> None:
    """Push config management after a create. The SDK's 0.3 HTTP+JSON transport has no list
    or delete (and the SDK agent no 0.3 REST delete route): list is checked on the wire there."""
    config_id = f"cfg-{uuid.uuid4().hex[:8]}"
    async with sdk_client(gateway, "echo", key["secret"], version, binding) as client:
        task = await send_for_task(client, send_request(user_message("wait"), return_immediately=True))
        try:
            stored = await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task.id, id=config_id, url=webhook.url, token=PUSH_TOKEN)
            )
            assert stored.task_id == task.id and stored.id == config_id, stored
            # The caller sees its own webhook and token, never the relay's callback and token.
            assert (stored.url, stored.token) == (webhook.url, PUSH_TOKEN), stored

            got = await client.get_task_push_notification_config(
                GetTaskPushNotificationConfigRequest(task_id=task.id, id=config_id)
            )
            assert got.task_id == task.id and got.id == config_id, got
            assert (got.url, got.token) == (webhook.url, PUSH_TOKEN), got

            if version == "0.3" and binding == "HTTP+JSON":
                res = rest(gateway, "echo", key["secret"], "GET", f"/tasks/{task.id}/pushNotificationConfigs", version=version)
                assert res.status_code == 200, res.text
                body = res.json()
                configs = body if isinstance(body, list) else body.get("configs", [])
                ids = [c.get("pushNotificationConfig", c).get("id") for c in configs]
                assert ids == [config_id], res.text
                return
            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task.id)
            )
            assert [c.id for c in listed.configs] == [config_id], listed
            assert all(c.task_id == task.id for c in listed.configs), listed

            await client.delete_task_push_notification_config(
                DeleteTaskPushNotificationConfigRequest(task_id=task.id, id=config_id)
            )
            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task.id)
            )
            assert list(listed.configs) == [], listed
            with pytest.raises(A2AError):
                await client.get_task_push_notification_config(
                    GetTaskPushNotificationConfigRequest(task_id=task.id, id=config_id)
                )
        finally:
            await client.cancel_task(CancelTaskRequest(id=task.id))


@contextlib.asynccontextmanager
async def direct_client(agent: Agent, version: str, binding: str) -> AsyncIterator[Client]:
    """An SDK client talking to the agent itself (no gateway), claiming an extended card."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        card = await A2ACardResolver(http, agent.url).get_agent_card()
        card.capabilities.extended_agent_card = True
        yield make_client(card, version, binding, http, streaming=False)


async def extended_card_error(client: Client) -> A2AError | A2AClientError:
    with pytest.raises((A2AError, A2AClientError)) as caught:
        card = await client.get_extended_agent_card(GetExtendedAgentCardRequest())
        pytest.fail(f"an extended card came back: {card}")
    return caught.value


@pytest.mark.parametrize("version, binding", MATRIX)
async def test_the_extended_card_error_is_the_agents(
    gateway: Gateway, agents: dict[str, Agent], key: dict, version: str, binding: str
) -> None:
    """The agent has no extended card: the SDK sees, through the gateway, the error the agent
    gives it directly."""
    async with sdk_client(gateway, "echo", key["secret"], version, binding, claim_extended_card=True) as client:
        via_gateway = await extended_card_error(client)
    async with direct_client(agents["echo"], version, binding) as client:
        direct = await extended_card_error(client)
    assert type(via_gateway) is type(direct), f"{via_gateway!r} vs {direct!r}"
    # An HTTP error's text names the URL it was sent to.
    said = str(via_gateway).replace(f"{gateway.origin}/a2a/echo", agents["echo"].url)
    assert said == str(direct), f"{via_gateway!r} vs {direct!r}"


EXTENDED_CARD_CALLS = [
    pytest.param("1.0", "JSONRPC", "GetExtendedAgentCard", id="1.0-JSONRPC"),
    pytest.param("0.3", "JSONRPC", "agent/getAuthenticatedExtendedCard", id="0.3-JSONRPC"),
    pytest.param("1.0", "HTTP+JSON", "/a2a/rest/extendedAgentCard", id="1.0-HTTP+JSON"),
    pytest.param("0.3", "HTTP+JSON", "/a2a/rest/v1/card", id="0.3-HTTP+JSON"),
]


@pytest.mark.parametrize("version, binding, call", EXTENDED_CARD_CALLS)
def test_the_extended_card_error_passes_through_unchanged(
    gateway: Gateway, agents: dict[str, Agent], key: dict, version: str, binding: str, call: str
) -> None:
    def ask(base: str, secret: str | None) -> httpx.Response:
        headers = {"A2A-Version": version, **(bearer(secret) if secret else {})}
        if binding == "JSONRPC":
            body = {"jsonrpc": "2.0", "id": 7, "method": call, "params": {}}
            return httpx.post(f"{base}/a2a/jsonrpc", json=body, headers=headers, timeout=TIMEOUT)
        return httpx.get(f"{base}{call}", headers=headers, timeout=TIMEOUT)

    direct = ask(agents["echo"].url, None)
    via_gateway = ask(f"{gateway.origin}/a2a/echo", key["secret"])
    assert (via_gateway.status_code, via_gateway.json()) == (direct.status_code, direct.json()), (
        f"gateway: {via_gateway.status_code} {via_gateway.text}\nagent: {direct.status_code} {direct.text}"
    )
    if binding == "JSONRPC":
        assert rpc_error(direct)["code"] in (-32004, -32007), direct.text
    else:
        assert direct.status_code >= 400, direct.text
    # Without a credential the gateway answers, and the agent is not asked.
    agents["echo"].clear()
    anonymous = ask(f"{gateway.origin}/a2a/echo", None)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers.get("www-authenticate", "").startswith("Bearer")
    if binding == "JSONRPC":
        assert rpc_error(anonymous)["code"] == -32050, anonymous.text
    assert agents["echo"].protocol_calls() == []
