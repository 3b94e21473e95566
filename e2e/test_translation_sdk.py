"""Any dialect to any provider, through the official SDKs.

The `anthropic` SDK talks to `/v1/messages` served by OpenAI-type, Gemini and Bedrock upstreams
(translated) and by an Anthropic upstream (passed through); the `openai` SDK talks to chat
completions and the Responses API served by Anthropic, Gemini and Bedrock upstreams. The
upstreams are tollgate-provider-mock, which speaks each vendor's real wire format: it echoes `You said: <text>`, calls the first tool for a message about the
weather (Paris, and Rome when named), answers a tool result with `The tool said: <result>`,
signs its thinking and refuses thinking whose signature came back changed.
"""

from __future__ import annotations

import json

import anthropic
import pytest

ANTHROPIC_MODELS = ["claude-via-openai", "claude-direct", "claude-via-gemini", "claude-via-bedrock"]
# OpenAI clients served by other vendors.
OPENAI_MODELS = ["gpt-via-anthropic", "gpt-via-gemini", "gpt-via-bedrock"]

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}

OPENAI_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": WEATHER_TOOL["input_schema"],
    },
}


@pytest.fixture(scope="module")
def claude(gateway, unrestricted_key) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gateway.origin,
        api_key=unrestricted_key["secret"],
        max_retries=0,
        timeout=30.0,
    )


@pytest.mark.parametrize("model", ANTHROPIC_MODELS)
def test_messages_text(claude, model):
    msg = claude.messages.create(
        model=model,
        max_tokens=200,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello gateway"}],
    )
    assert msg.type == "message"
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "You said: hello gateway"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0
    assert msg.usage.output_tokens > 0


@pytest.mark.parametrize("model", ANTHROPIC_MODELS)
def test_messages_stream_text(claude, model):
    with claude.messages.stream(
        model=model,
        max_tokens=200,
        messages=[{"role": "user", "content": "stream me some words"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "You said: stream me some words"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens > 0


def _tool_round(claude, model, stream: bool):
    request = dict(
        model=model,
        max_tokens=300,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather in Paris and Rome?"}],
    )
    if stream:
        with claude.messages.stream(**request) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(**request)
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather", "get_weather"]
    assert [u.input for u in uses] == [{"city": "Paris"}, {"city": "Rome"}]

    request["messages"] = request["messages"] + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": u.id, "content": f"{20 + i}C"}
                for i, u in enumerate(uses)
            ],
        },
    ]
    if stream:
        with claude.messages.stream(**request) as s:
            text = "".join(s.text_stream)
            second = s.get_final_message()
    else:
        second = claude.messages.create(**request)
        text = second.content[0].text
    assert text == "The tool said: 21C"
    assert second.stop_reason == "end_turn"


@pytest.mark.parametrize("model", ANTHROPIC_MODELS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_messages_tool_calls(claude, model, stream):
    _tool_round(claude, model, stream)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_messages_thinking_signature_round_trips(claude, stream):
    request = dict(
        model="claude-direct",
        max_tokens=4000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "think about 2+2"}],
    )
    if stream:
        with claude.messages.stream(**request) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(**request)
    thinking = [b for b in first.content if b.type == "thinking"]
    assert thinking and thinking[0].signature.startswith("sig-")
    request["messages"] = request["messages"] + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": "are you sure?"},
    ]
    # The upstream refuses thinking whose signature changed: a 200 proves it round-tripped.
    second = claude.messages.create(**request)
    assert second.content[-1].text == "You said: are you sure?"


def test_messages_count_tokens(claude):
    count = claude.messages.count_tokens(
        model="claude-via-openai",
        messages=[{"role": "user", "content": "count these few words please"}],
    )
    assert count.input_tokens >= 5


def test_messages_upstream_error_in_anthropic_shape(claude):
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(
            model="claude-via-openai",
            max_tokens=10,
            messages=[{"role": "user", "content": "please fail with 400"}],
        )
    assert err.value.status_code == 400
    assert "mock failure 400" in str(err.value)


def test_messages_bad_key(gateway):
    bad = anthropic.Anthropic(base_url=gateway.origin, api_key="tg-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(
            model="claude-direct", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )


def test_messages_loss_is_reported(claude):
    raw = claude.messages.with_raw_response.create(
        model="claude-via-openai",
        max_tokens=50,
        extra_body={"top_k": 5},
        messages=[{"role": "user", "content": "hi"}],
    )
    assert raw.headers.get("x-tollgate-translation-loss") == "top_k"
    assert raw.parse().content[0].text == "You said: hi"


# ---- the openai SDK against an Anthropic upstream ----


@pytest.mark.parametrize("model", OPENAI_MODELS)
def test_chat_text_via_other_vendors(full_client, model):
    res = full_client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi claude"}],
    )
    choice = res.choices[0]
    assert choice.message.content == "You said: hi claude"
    assert choice.finish_reason == "stop"
    assert res.usage.prompt_tokens > 0
    assert res.usage.completion_tokens > 0


@pytest.mark.parametrize("model", OPENAI_MODELS)
def test_chat_stream_via_other_vendors(full_client, model):
    stream = full_client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "stream from claude"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == "You said: stream from claude"
    assert finish == "stop"
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", OPENAI_MODELS)
def test_chat_tool_calls_via_other_vendors(full_client, stream, model):
    messages = [{"role": "user", "content": "weather in Paris and Rome please"}]
    request = dict(model=model, messages=messages, tools=[OPENAI_WEATHER_TOOL])
    if stream:
        calls: dict = {}
        finish = None
        for chunk in full_client.chat.completions.create(**request, stream=True):
            for c in chunk.choices:
                finish = c.finish_reason or finish
                for tc in c.delta.tool_calls or []:
                    slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                    slot["id"] = tc.id or slot["id"]
                    if tc.function:
                        slot["name"] += tc.function.name or ""
                        slot["arguments"] += tc.function.arguments or ""
        tool_calls = [calls[i] for i in sorted(calls)]
    else:
        res = full_client.chat.completions.create(**request)
        finish = res.choices[0].finish_reason
        tool_calls = [
            {"id": t.id, "name": t.function.name, "arguments": t.function.arguments}
            for t in res.choices[0].message.tool_calls
        ]
    assert finish == "tool_calls"
    assert [t["name"] for t in tool_calls] == ["get_weather", "get_weather"]
    assert [json.loads(t["arguments"]) for t in tool_calls] == [{"city": "Paris"}, {"city": "Rome"}]

    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": t["id"], "type": "function", "function": {"name": t["name"], "arguments": t["arguments"]}}
                for t in tool_calls
            ],
        }
    )
    for t in tool_calls:
        messages.append({"role": "tool", "tool_call_id": t["id"], "content": "cloudy"})
    res = full_client.chat.completions.create(**request)
    assert res.choices[0].message.content == "The tool said: cloudy"


@pytest.mark.parametrize("model", OPENAI_MODELS)
def test_chat_reasoning_round_trips_via_other_vendors(full_client, model):
    messages = [{"role": "user", "content": "think first"}]
    res = full_client.chat.completions.create(
        model=model, messages=messages, reasoning_effort="low", max_tokens=3000
    )
    message = res.choices[0].message.model_dump(exclude_none=True)
    assert "think" in message["reasoning_content"]
    assert any("sig-" in b.get("signature", "") for b in message["thinking_blocks"])
    messages += [message, {"role": "user", "content": "again"}]
    res = full_client.chat.completions.create(
        model=model, messages=messages, reasoning_effort="low", max_tokens=3000
    )
    assert res.choices[0].message.content == "You said: again"


# ---- the openai SDK's Responses API against an Anthropic upstream ----

RESPONSES_WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": WEATHER_TOOL["input_schema"],
}


@pytest.mark.parametrize("model", OPENAI_MODELS)
def test_responses_text_via_other_vendors(full_client, model):
    res = full_client.responses.create(
        model=model, instructions="Be brief.", input="hello responses"
    )
    assert res.status == "completed"
    assert res.output_text == "You said: hello responses"
    assert res.usage.input_tokens > 0 and res.usage.output_tokens > 0


@pytest.mark.parametrize("model", OPENAI_MODELS)
def test_responses_stream_via_other_vendors(full_client, model):
    deltas = []
    with full_client.responses.stream(model=model, input="stream responses") as s:
        for event in s:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = s.get_final_response()
    assert "".join(deltas) == "You said: stream responses"
    assert final.output_text == "You said: stream responses"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", OPENAI_MODELS)
def test_responses_tool_calls_via_other_vendors(full_client, stream, model):
    items = [{"role": "user", "content": "weather in Paris and Rome?"}]
    request = dict(model=model, tools=[RESPONSES_WEATHER_TOOL])
    if stream:
        with full_client.responses.stream(input=items, **request) as s:
            first = s.get_final_response()
    else:
        first = full_client.responses.create(input=items, **request)
    calls = [o for o in first.output if o.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    items += [o.model_dump(exclude_none=True) for o in first.output]
    items += [{"type": "function_call_output", "call_id": c.call_id, "output": "windy"} for c in calls]
    second = full_client.responses.create(input=items, **request)
    assert second.output_text == "The tool said: windy"


@pytest.mark.parametrize("model", OPENAI_MODELS)
def test_responses_reasoning_round_trips_via_other_vendors(full_client, model):
    items = [{"role": "user", "content": "think it over"}]
    request = dict(
        model=model,
        reasoning={"effort": "low"},
        store=False,
        include=["reasoning.encrypted_content"],
        max_output_tokens=3000,
    )
    first = full_client.responses.create(input=items, **request)
    reasoning = [o for o in first.output if o.type == "reasoning"]
    assert any("sig-" in (r.encrypted_content or "") for r in reasoning)
    items += [o.model_dump(exclude_none=True) for o in first.output]
    items.append({"role": "user", "content": "again"})
    # The upstream refuses thinking whose signature changed.
    second = full_client.responses.create(input=items, **request)
    assert second.output_text == "You said: again"
