"""One conversation id across the three layers, with each layer's official SDK.

A caller talks to an `a2a-sdk` agent through tollgate (`/a2a/echo`). The agent receives the
conversation id (the A2A `contextId`, as `x-tollgate-conversation-id`) and a token tollgate
minted for it. Acting as that agent, this test then calls a model with the `openai` SDK and a
tool with the `mcp` SDK through the same gateway, presenting that token and the conversation id.
`GET /admin/v1/conversations/{id}` must return all three: the agent hops, the model call with
its tokens and cost, and the tool call, each attributed to the caller on whose behalf the agent
acted.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from a2a_probe import make_client, resolve_card, send_for_task, send_request, user_message
from conftest import CONFIG_HEAD, MASTER_KEY, MOCK_ECHO, launch_gateway, new_key
from mcp_client_util import start_upstream, text_of
from mcp_client_util import connect as mcp_connect
from test_a2a_gateway import start_agent

pytestmark = pytest.mark.anyio

CONFIG = CONFIG_HEAD + """\
logging:
  level: warn
""" + MOCK_ECHO + """\
mcp:
  servers:
    - name: tools
      url: {tools}
a2a:
  agents:
    - name: echo
      url: {agent}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_one_conversation_joins_agent_model_and_tool_calls(tmp_path: Path) -> None:
    with start_agent("echo") as agent, start_upstream(name="tools") as tools:
        config = CONFIG.format(master=MASTER_KEY, db=tmp_path / "t.db", tools=tools.url, agent=agent.url)
        with launch_gateway(tmp_path, config) as gw:
            created = new_key(gw)
            key_id, secret = created["key"]["id"], created["secret"]
            headers = {"Authorization": f"Bearer {secret}"}

            # The caller starts a conversation with the agent, then follows up in it.
            card = await resolve_card(f"{gw.origin}/a2a/echo", headers, None)
            async with httpx.AsyncClient(headers=headers, timeout=15) as http:
                client = make_client(card, "1.0", "JSONRPC", http, streaming=False)
                first = await send_for_task(client, send_request(user_message("hello")))
                conversation = first.context_id
                await send_for_task(client, send_request(user_message("hello again", context_id=conversation)))

            # What the agent received on the follow-up: the conversation id and its own token.
            hop = agent.protocol_calls()[-1]["headers"]
            assert hop["x-tollgate-conversation-id"] == conversation
            token = hop["authorization"].removeprefix("Bearer ")
            assert token != secret
            joined = {"x-tollgate-conversation-id": conversation}

            # Acting for the caller, the agent asks a model ...
            llm = openai.OpenAI(
                base_url=gw.base_url, api_key=token, default_headers=joined, max_retries=0, timeout=30
            )
            answer = llm.chat.completions.create(
                model="mock-echo", messages=[{"role": "user", "content": "summarise the plan"}]
            )
            assert answer.usage is not None and answer.usage.prompt_tokens > 0

            # ... and calls a tool.
            async with mcp_connect(f"{gw.origin}/mcp", {"Authorization": f"Bearer {token}", **joined}) as mcp:
                assert text_of(await mcp.call_tool("echo", {"text": "for the plan"})) == "for the plan"

            res = gw.admin("GET", f"/admin/v1/conversations/{conversation}")
            assert res.status_code == 200, res.text
            view = res.json()
            assert view["totals"]["agent_calls"] == 2, view
            assert view["totals"]["model_calls"] == 1, view
            assert view["totals"]["tool_calls"] == 1, view
            assert view["totals"]["prompt_tokens"] == answer.usage.prompt_tokens

            hops = view["agent_calls"]
            assert [h["detail"]["method"] for h in hops] == ["SendMessage", "SendMessage"]
            assert all(h["principal"] == key_id and h["detail"]["agent"] == "echo" for h in hops)
            model_call = view["model_calls"][0]
            assert model_call["model"] == "mock-echo"
            assert model_call["agent"] == "echo"
            assert model_call["principal"] == f"jwt:{key_id}"
            tool_call = view["tool_calls"][0]
            assert tool_call["action"] == "mcp.tools/call"
            assert tool_call["target"] == "tools/echo"
            assert tool_call["principal"] == f"jwt:{key_id}"

            # The view is the operator's: the caller's own key cannot read it.
            denied = httpx.get(f"{gw.origin}/admin/v1/conversations/{conversation}", headers=headers)
            assert denied.status_code in (401, 403)
