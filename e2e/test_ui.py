"""The admin console (`/ui`) in a real browser: `e2e/ui/flow.mjs` drives Debian's chromium with
playwright-core (pinned in e2e/node/package.json; `npm ci --prefix e2e/node`), on the pinned
Node 22 when installed.

The gateway runs the embedded default's model (the mock provider serving `mock-echo`), priced
here so that a call costs something, plus two tool servers (one whose tools drift), an agent,
a budget, a team and users, so that every page has something to show. Before the browser starts, this test records
traffic the console must display: a few model calls (one failing), a conversation that joins an
agent hop, a model call and a tool call (as in test_a2a_conversation.py), a tool call left
waiting for an approval, and tool definitions that drifted (as in test_mcp_governance.py).

The browser then does what a newcomer does: opens /ui, signs in with the master key (by
keyboard), creates a key, calls mock-echo with it, and finds the call and its cost on the
overview, the spend explorer and the key's page; gives the key a budget and a requests-per-minute
limit of its own in the edit form and sees the second call within the minute refused; it visits every page (accessibility checks and
a full-page screenshot each), checks that a change without the CSRF header is refused, and
signs out. Screenshots go to the test's tmp dir and are copied to target/ui-artifacts/.

Needs /usr/bin/chromium (Debian's `chromium` package; $CHROMIUM overrides) and the npm pins.
Without them the test is skipped, loudly, unless TOLLGATE_REQUIRE_SERVICES is set (CI), where
it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from a2a_probe import make_client, resolve_card, send_for_task, send_request, user_message
from conftest import CONFIG_HEAD, MASTER_KEY, REPO, launch_gateway, new_key
from mcp_client_util import connect as mcp_connect
from mcp_client_util import start_upstream, text_of
from test_a2a_gateway import start_agent
from test_mcp_governance import DRIFT_SCRIPT, STATE_V1, STATE_V2

pytestmark = pytest.mark.anyio

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_MODULES = NODE_DIR / "node_modules"
PLAYWRIGHT = NODE_MODULES / "playwright-core" / "package.json"
FLOW = Path(__file__).resolve().parent / "ui" / "flow.mjs"
CHROMIUM = Path(os.environ.get("CHROMIUM") or "/usr/bin/chromium")
ARTIFACTS_COPY = REPO / "target" / "ui-artifacts"
FLOW_TIMEOUT = 300

CONFIG = CONFIG_HEAD + """\
logging:
  level: warn
providers:
  - name: mock
    kind: mock
  - name: broken
    kind: mock
    mock:
      error_rate: 1.0
      error_status: 503
models:
  - name: mock-echo
    targets:
      - provider: mock
        model: echo
  - name: broken-model
    targets: [{{provider: broken, model: echo}}]
    retry: {{attempts: 1}}
    cooldown: {{failures: 1000000}}
# The embedded default leaves mock-echo unpriced (it costs $0); a price makes the cost visible.
prices:
  - model: echo
    input_per_mtok: 0.5
    output_per_mtok: 1.5
budgets:
  - name: echo-per-key
    scope: key
    models: [mock-echo]
    period: daily
    limit_usd: 1
mcp:
  approvals:
    wait: 1s
    ttl: 1h
  servers:
    - name: tools
      url: {tools}
    # A stdio server whose next process serves a changed definition: drift to review.
    - name: drifty
      command: {python}
      args: [{drift_script}, {drift_state}]
      env: {{PYTHONUNBUFFERED: "1"}}
      on_drift: block
a2a:
  agents:
    - name: echo
      url: {agent}
policies:
  - name: tools
    applies_to: "request.layer == 'tool'"
    rules:
      - name: big-payments
        when: "request.tool == 'pay' && request.args.amount > 100"
        action: require_approval
      - name: everything-else
        when: "true"
        action: allow
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def node_binary() -> str:
    for candidate in (NODE_MODULES / "node" / "bin" / "node", NODE_MODULES / ".bin" / "node"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("node")
    if found is None:
        missing("no node: neither e2e/node's pinned one nor one on PATH")
    return str(found)


def missing(why: str) -> None:
    """Fails in CI (TOLLGATE_REQUIRE_SERVICES), else skips with the reason in the summary."""
    if os.environ.get("TOLLGATE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"browser test prerequisites missing: {why}", pytrace=False)
    print(f"\n*** SKIPPING the console browser test: {why} ***\n")
    pytest.skip(f"console browser test skipped: {why}")


def require_browser() -> None:
    if not CHROMIUM.is_file():
        missing(f"{CHROMIUM} not found (apt-get install chromium, or set CHROMIUM)")
    if not PLAYWRIGHT.is_file():
        missing("playwright-core is not installed: run `npm ci --prefix e2e/node`")


async def record_traffic(gw) -> tuple[str, dict]:
    """Model calls, a failing call and a cross-layer conversation. Returns the conversation id
    and two more keys for the sign-in checks: an admin principal's and a plain one."""
    # A team, a user in it and their key, with a few calls (one to a model that always fails).
    assert gw.admin("POST", "/admin/v1/teams", {"id": "research", "name": "Research", "roles": ["analyst"]}).status_code == 201
    res = gw.admin("POST", "/admin/v1/users", {"id": "alice", "name": "Alice", "email": "alice@example.com", "team": "research"})
    assert res.status_code == 201, res.text
    alice = new_key(gw, name="alice-notebook", user="alice", team="research", models=["mock-*", "broken-*"])
    llm = gw.client(alice["secret"])
    # An operator whose user holds the admin role may use the console with their own key.
    res = gw.admin("POST", "/admin/v1/users", {"id": "ops", "name": "Ops on call", "roles": ["admin"]})
    assert res.status_code == 201, res.text
    ops = new_key(gw, name="ops-console", user="ops")
    for text in ("What is a tollgate?", "Summarise the quarterly numbers in three lines."):
        llm.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": text}])
    with pytest.raises(openai.APIStatusError):
        llm.chat.completions.create(model="broken-model", messages=[{"role": "user", "content": "fail"}])

    # One conversation across the three layers: an agent hop, then, acting for the caller with
    # the token the gateway minted for the agent, a model call and a tool call.
    caller = new_key(gw, name="planner-service")
    headers = {"Authorization": f"Bearer {caller['secret']}"}
    card = await resolve_card(f"{gw.origin}/a2a/echo", headers, None)
    async with httpx.AsyncClient(headers=headers, timeout=15) as http:
        client = make_client(card, "1.0", "JSONRPC", http, streaming=False)
        first = await send_for_task(client, send_request(user_message("hello")))
        conversation = first.context_id
        await send_for_task(client, send_request(user_message("hello again", context_id=conversation)))
    return conversation, {"ADMIN_KEY": ops["secret"], "NON_ADMIN_KEY": alice["secret"]}


async def drift(gw, state: Path, key: str) -> None:
    """Pins drifty's tools, then makes its next process serve changed definitions (a widened
    schema, a hidden character, a rename) and lists the tools again."""
    headers = {"Authorization": f"Bearer {key}"}
    async with mcp_connect(f"{gw.origin}/mcp", headers) as mcp:
        await mcp.list_tools()
    state.write_text(json.dumps(STATE_V2))
    async with mcp_connect(f"{gw.origin}/mcp", headers) as mcp:
        await mcp.list_tools()
    pins = gw.admin("GET", "/admin/v1/mcp/pins?server=drifty").json()["pins"]
    assert any(p["tool"] == "transfer" and p["drift"] for p in pins), pins


async def act_as_agent(gw, agent, conversation: str) -> None:
    hop = agent.protocol_calls()[-1]["headers"]
    token = hop["authorization"].removeprefix("Bearer ")
    joined = {"x-tollgate-conversation-id": conversation}
    llm = openai.OpenAI(base_url=gw.base_url, api_key=token, default_headers=joined, max_retries=0, timeout=30)
    llm.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "summarise the plan"}])
    async with mcp_connect(f"{gw.origin}/mcp", {"Authorization": f"Bearer {token}", **joined}) as mcp:
        assert text_of(await mcp.call_tool("echo", {"text": "for the plan"})) == "for the plan"
        # Above the policy's threshold: held for an approval nobody gives within `wait`.
        held = await mcp.call_tool("pay", {"amount": 500, "to": "bob"})
        assert held.is_error, text_of(held)


def run_flow(gw, artifacts: Path, conversation: str, keys: dict) -> dict:
    env = {
        **os.environ,
        **keys,
        "ORIGIN": gw.origin,
        "MASTER_KEY": MASTER_KEY,
        "ARTIFACTS": str(artifacts),
        "CHROMIUM": str(CHROMIUM),
        "CONVERSATION": conversation,
    }
    try:
        proc = subprocess.run(
            [node_binary(), str(FLOW)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=FLOW_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"flow.mjs did not finish within {FLOW_TIMEOUT}s\n--- stdout ---\n{e.stdout}\n--- stderr ---\n{e.stderr}\n{gw.logs()}",
            pytrace=False,
        )
    # Keep the screenshots where a person can find them after the tmp dir is gone.
    shutil.rmtree(ARTIFACTS_COPY, ignore_errors=True)
    if artifacts.is_dir():
        shutil.copytree(artifacts, ARTIFACTS_COPY)
    if proc.returncode != 0:
        pytest.fail(
            f"the console browser flow failed (exit {proc.returncode}); screenshots in {ARTIFACTS_COPY}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}\n{gw.logs()}",
            pytrace=False,
        )
    return json.loads(proc.stdout)


async def test_a_newcomer_signs_in_creates_a_key_and_sees_its_spend(tmp_path: Path) -> None:
    require_browser()
    with start_agent("echo") as agent, start_upstream(name="tools") as tools:
        state = tmp_path / "drift-state.json"
        state.write_text(json.dumps(STATE_V1))
        config = CONFIG.format(
            master=MASTER_KEY,
            db=tmp_path / "tollgate.db",
            tools=tools.url,
            agent=agent.url,
            python=json.dumps(sys.executable),
            drift_script=json.dumps(str(DRIFT_SCRIPT)),
            drift_state=json.dumps(str(state)),
        )
        with launch_gateway(tmp_path, config) as gw:
            conversation, keys = await record_traffic(gw)
            await act_as_agent(gw, agent, conversation)
            await drift(gw, state, keys["NON_ADMIN_KEY"])
            pending = gw.admin("GET", "/admin/v1/mcp/approvals?status=pending").json()["approvals"]
            assert len(pending) == 1, pending

            summary = run_flow(gw, tmp_path / "ui-artifacts", conversation, keys)

            assert summary["ok"] is True
            assert all(step["ok"] for step in summary["steps"]), summary["steps"]
            assert not any(summary["a11y"].values()), summary["a11y"]
            shots = {Path(p).stem for p in summary["screenshots"]}
            for page in ("signin", "overview", "keys", "key-detail", "spend", "models", "mcp", "agents",
                         "agent-detail", "audit", "conversations", "conversation", "conversation-agents-tools",
                         "teams", "users"):
                assert page in shots, f"no screenshot of {page}: {sorted(shots)}"
                assert (ARTIFACTS_COPY / f"{page}.png").stat().st_size > 10_000

            # The server's side of the same story: the key the browser created, used twice (the
            # call it looked for, then one under the limits it was given; the refused third call
            # is not recorded), its limits edited and cleared, and the console's sign-ins (the
            # refused one too) and sign-out in the audit chain.
            key_id = summary["key"]["id"]
            spend = gw.admin("GET", f"/admin/v1/spend?filter_by=key&filter={key_id}").json()
            assert spend["total_requests"] == 2 and spend["total_cost_usd"] > 0, spend
            updates = gw.admin("GET", f"/admin/v1/audit?action=key.update&target={key_id}").json()["data"]
            assert len(updates) == 2, updates
            assert gw.admin("GET", f"/admin/v1/keys/{key_id}").json()["limits"] == {}
            audit = gw.admin("GET", "/admin/v1/audit?action=console.*&limit=50").json()["data"]
            seen = {(r["action"], r["outcome"]) for r in audit}
            assert ("console.login", "success") in seen, audit
            assert ("console.login", "failure") in seen, audit
            assert ("console.logout", "success") in seen, audit
            principals = {r["principal"] for r in audit if r["action"] == "console.login" and r["outcome"] == "success"}
            assert "master" in principals and len(principals) == 2, audit
            created = gw.admin("GET", f"/admin/v1/audit?action=key.create&target={key_id}").json()["data"]
            assert created and created[0]["principal"] == "master", created
