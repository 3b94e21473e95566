"""The gateway as the official OpenAI Python SDK sees it, against the real binary.

The mock provider echoes the last user message. Its token rule: each whitespace-separated word
costs ceil(len/4) tokens (at least 1); completion_tokens = tokens of the echoed text;
prompt_tokens = sum over messages of (3 + tokens(content)) + 3.
"""

from __future__ import annotations

import math
import uuid

import openai
import pytest


def mock_tokens(text: str) -> int:
    return sum(max(1, math.ceil(len(w) / 4)) for w in text.split())


def assert_error_body(err: openai.APIStatusError, *, type_: str, code: str | None, param=None):
    """The SDK unwraps `{"error": {...}}` into `err.body`."""
    body = err.body
    assert isinstance(body, dict), body
    assert set(body) >= {"message", "type", "code", "param"}, body
    assert isinstance(body["message"], str) and body["message"], body
    assert body["type"] == type_, body
    assert body["code"] == code, body
    assert body["param"] == param, body
    assert err.code == code
    assert err.type == type_


# --- chat completions -------------------------------------------------------------------------


def test_chat_echoes_last_user_message(client: openai.OpenAI):
    text = "hello wonderful world"
    res = client.chat.completions.create(
        model="mock-echo",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "an earlier question"},
            {"role": "assistant", "content": "an earlier answer"},
            {"role": "user", "content": text},
        ],
    )
    assert res.object == "chat.completion"
    assert res.model == "mock-echo"
    assert res.id
    assert len(res.choices) == 1
    choice = res.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == text
    assert choice.finish_reason == "stop"

    u = res.usage
    assert u is not None
    for n in (u.prompt_tokens, u.completion_tokens, u.total_tokens):
        assert isinstance(n, int) and n > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_chat_usage_exact_numbers(client: openai.OpenAI):
    # "You are terse." -> You(1) are(1) terse.(2) = 4 tokens
    # "hello wonderful world" -> hello(2) wonderful(3) world(2) = 7 tokens
    # prompt = (3 + 4) + (3 + 7) + 3 = 20; completion = 7; total = 27
    system, user = "You are terse.", "hello wonderful world"
    assert mock_tokens(system) == 4 and mock_tokens(user) == 7
    res = client.chat.completions.create(
        model="mock-echo",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
    )
    assert res.choices[0].message.content == user
    assert res.usage is not None
    assert res.usage.prompt_tokens == 20
    assert res.usage.completion_tokens == 7
    assert res.usage.total_tokens == 27


def test_chat_content_parts_are_joined(client: openai.OpenAI):
    res = client.chat.completions.create(
        model="mock-echo",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "part one "}, {"type": "text", "text": "two"}],
            }
        ],
    )
    assert res.choices[0].message.content == "part one two"


def test_chat_stream_with_usage(client: openai.OpenAI):
    text = "the quick brown fox jumps over the lazy dog"
    stream = client.chat.completions.create(
        model="mock-echo",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    # role chunk, 4 content chunks (mock.chunks: 4), finish chunk, usage chunk.
    assert len(chunks) == 7, [c.model_dump() for c in chunks]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.model == "mock-echo" for c in chunks)
    assert len({c.id for c in chunks}) == 1

    role = chunks[0]
    assert role.choices[0].delta.role == "assistant"
    assert role.choices[0].delta.content == ""
    assert role.choices[0].finish_reason is None

    content = chunks[1:5]
    for c in content:
        assert len(c.choices) == 1
        assert c.choices[0].delta.content
        assert c.choices[0].finish_reason is None
        assert c.usage is None
    assert "".join(c.choices[0].delta.content for c in content) == text

    finish = chunks[5]
    assert finish.choices[0].finish_reason == "stop"
    assert not finish.choices[0].delta.content
    assert finish.usage is None

    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == mock_tokens(text)
    assert last.usage.prompt_tokens == 3 + mock_tokens(text) + 3
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_chat_stream_without_usage(client: openai.OpenAI):
    text = "no usage wanted here"
    stream = client.chat.completions.create(
        model="mock-echo",
        messages=[{"role": "user", "content": text}],
        stream=True,
    )
    chunks = list(stream)
    assert len(chunks) == 6, [c.model_dump() for c in chunks]
    assert all(c.usage is None for c in chunks)
    assert all(len(c.choices) == 1 for c in chunks)
    deltas = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert deltas == text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_max_tokens_truncates(client: openai.OpenAI):
    res = client.chat.completions.create(
        model="mock-echo",
        messages=[{"role": "user", "content": "one two three four"}],
        max_tokens=2,
    )
    # one(1) two(1) fit in 2 tokens; the whitespace after the last kept word stays.
    choice = res.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content == "one two "
    assert res.usage is not None
    assert res.usage.completion_tokens == 2


def test_chat_max_completion_tokens_truncates(client: openai.OpenAI):
    res = client.chat.completions.create(
        model="mock-echo",
        messages=[{"role": "user", "content": "one two three four"}],
        max_completion_tokens=4,
    )
    # one(1) two(1) three(2) fit in 4 tokens; four(1) would make 5.
    assert res.choices[0].finish_reason == "length"
    assert res.choices[0].message.content == "one two three "
    assert res.usage is not None
    assert res.usage.completion_tokens == 4


def test_chat_stream_truncated_finish_reason(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model="mock-echo",
        messages=[{"role": "user", "content": "one two three four"}],
        max_tokens=2,
        stream=True,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two "
    assert chunks[-1].choices[0].finish_reason == "length"


# --- embeddings -------------------------------------------------------------------------------


def test_embeddings_shape_determinism_and_norm(client: openai.OpenAI):
    res = client.embeddings.create(model="mock-echo", input=["a", "b"])
    assert res.object == "list"
    assert res.model == "mock-echo"
    assert [d.index for d in res.data] == [0, 1]
    vectors = [d.embedding for d in res.data]
    for v in vectors:
        assert len(v) == 16
        assert all(isinstance(x, float) for x in v)
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-5)
    assert vectors[0] != vectors[1]
    assert res.usage.prompt_tokens > 0
    assert res.usage.prompt_tokens == 2
    assert res.usage.total_tokens == res.usage.prompt_tokens

    again = client.embeddings.create(model="mock-echo", input=["b", "a"])
    assert again.data[0].embedding == vectors[1]
    assert again.data[1].embedding == vectors[0]

    single = client.embeddings.create(model="mock-echo", input="a")
    assert len(single.data) == 1
    assert single.data[0].embedding == vectors[0]


def test_embeddings_dimensions(client: openai.OpenAI):
    res = client.embeddings.create(model="mock-echo", input=["a", "b"], dimensions=8)
    assert [len(d.embedding) for d in res.data] == [8, 8]
    for d in res.data:
        assert math.isclose(math.sqrt(sum(x * x for x in d.embedding)), 1.0, abs_tol=1e-5)


def test_embeddings_float_format_matches_base64(client: openai.OpenAI):
    # The SDK asks for base64 by default; an explicit "float" must give the same vector.
    b64 = client.embeddings.create(model="mock-echo", input="same text")
    flt = client.embeddings.create(model="mock-echo", input="same text", encoding_format="float")
    assert len(flt.data[0].embedding) == 16
    for x, y in zip(b64.data[0].embedding, flt.data[0].embedding):
        assert math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7)


# --- models -----------------------------------------------------------------------------------


def test_models_list_restricted_key(client: openai.OpenAI):
    ids = [m.id for m in client.models.list()]
    assert ids == ["mock-echo"]


def test_models_list_unrestricted_key(full_client: openai.OpenAI):
    models = list(full_client.models.list())
    assert [m.id for m in models] == [
        "claude-via-openai",
        "claude-direct",
        "gpt-via-anthropic",
        "gpt-via-gemini",
        "claude-via-gemini",
        "gpt-via-bedrock",
        "claude-via-bedrock",
        "mock-echo",
        "cached-echo",
        "semantic-echo",
        "semantic-brief",
        "other-model",
        "broken-model",
        "flaky-model",
        "limited-model",
        "budgeted-model",
    ]
    assert all(m.object == "model" for m in models)


def test_models_retrieve(client: openai.OpenAI):
    m = client.models.retrieve("mock-echo")
    assert m.id == "mock-echo"
    assert m.object == "model"


def test_models_retrieve_disallowed_and_unknown(client: openai.OpenAI, full_client):
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.models.retrieve("other-model")
    assert exc.value.status_code == 403
    assert exc.value.code == "model_not_allowed"

    with pytest.raises(openai.NotFoundError) as exc:
        full_client.models.retrieve("no-such-model")
    assert exc.value.status_code == 404
    assert exc.value.code == "model_not_found"


# --- errors -----------------------------------------------------------------------------------


def test_bad_key_is_401(gateway):
    bad = gateway.client("tg-not-a-real-key")
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(
            model="mock-echo", messages=[{"role": "user", "content": "hi"}]
        )
    err = exc.value
    assert err.status_code == 401
    assert_error_body(err, type_="authentication_error", code="invalid_api_key")
    assert err.response.headers.get("x-request-id")

    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_revoked_key_is_401(gateway, make_key):
    created = make_key(models=["mock-*"])
    c = gateway.client(created["secret"])
    ok = c.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content == "hi"

    res = gateway.admin("POST", f"/admin/v1/keys/{created['key']['id']}/revoke")
    assert res.status_code == 200, res.text
    assert res.json()["status"] == "revoked"

    with pytest.raises(openai.AuthenticationError) as exc:
        c.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 401
    assert exc.value.body["type"] == "authentication_error"


def test_disallowed_model_is_403(client: openai.OpenAI):
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.chat.completions.create(
            model="other-model", messages=[{"role": "user", "content": "hi"}]
        )
    err = exc.value
    assert err.status_code == 403
    assert_error_body(err, type_="permission_error", code="model_not_allowed", param="model")
    assert "other-model" in err.body["message"]


def test_restricted_key_cannot_probe_unknown_models(client: openai.OpenAI):
    # A name outside the key's patterns is 403 whether or not it exists.
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model="does-not-exist", messages=[{"role": "user", "content": "hi"}]
        )


def test_unknown_model_is_404(client: openai.OpenAI, full_client: openai.OpenAI):
    for c, model in ((full_client, "no-such-model"), (client, "mock-nonexistent")):
        with pytest.raises(openai.NotFoundError) as exc:
            c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        err = exc.value
        assert err.status_code == 404
        assert_error_body(err, type_="invalid_request_error", code="model_not_found", param="model")
        assert model in err.body["message"]


def test_upstream_failure_is_502(full_client: openai.OpenAI):
    with pytest.raises(openai.APIStatusError) as exc:
        full_client.chat.completions.create(
            model="broken-model", messages=[{"role": "user", "content": "hi"}]
        )
    err = exc.value
    assert err.status_code == 502
    assert isinstance(err, openai.InternalServerError)
    assert err.body["type"] == "upstream_error"
    assert err.body["code"] == "upstream_error"
    assert "503" in err.body["message"]
    assert "503" in err.message


def test_upstream_failure_on_stream_is_502(full_client: openai.OpenAI):
    with pytest.raises(openai.APIStatusError) as exc:
        list(
            full_client.chat.completions.create(
                model="broken-model",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
            )
        )
    assert exc.value.status_code == 502
    assert "503" in exc.value.message


def test_fallback_serves_and_says_so(full_client: openai.OpenAI):
    raw = full_client.chat.completions.with_raw_response.create(
        model="flaky-model",
        messages=[{"role": "user", "content": "rescue me"}],
    )
    res = raw.parse()
    assert res.choices[0].message.content == "rescue me"
    assert raw.headers["x-tollgate-model"] == "mock-echo"
    assert raw.headers["x-tollgate-fallback"] == "error"
    assert raw.headers["x-tollgate-attempts"] == "3"


def test_fallback_on_stream(full_client: openai.OpenAI):
    with full_client.chat.completions.with_streaming_response.create(
        model="flaky-model",
        messages=[{"role": "user", "content": "stream rescue"}],
        stream=True,
    ) as raw:
        assert raw.headers["x-tollgate-fallback"] == "error"
        text = "".join(
            c.choices[0].delta.content or "" for c in raw.parse() if c.choices
        )
    assert text == "stream rescue"


def test_missing_messages_is_400(client: openai.OpenAI):
    # The typed method will not send a request without `messages`; use the SDK's raw post.
    with pytest.raises(openai.BadRequestError) as exc:
        client.post(
            "/chat/completions",
            body={"model": "mock-echo"},
            cast_to=openai.types.chat.ChatCompletion,
        )
    err = exc.value
    assert err.status_code == 400
    assert err.body["type"] == "invalid_request_error"
    assert err.body["param"] == "messages"
    assert "messages" in err.body["message"]


def test_empty_messages_is_400(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="mock-echo", messages=[])
    assert exc.value.body["param"] == "messages"


def test_streamed_embeddings_are_rejected(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="mock-echo", input="a", extra_body={"stream": True})
    assert exc.value.body["param"] == "stream"


# --- request ids ------------------------------------------------------------------------------


def test_request_id_is_generated(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(
        model="mock-echo", messages=[{"role": "user", "content": "hi"}]
    )
    rid = raw.headers.get("x-request-id")
    assert rid
    assert raw.parse().choices[0].message.content == "hi"

    raw2 = client.chat.completions.with_raw_response.create(
        model="mock-echo", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw2.headers.get("x-request-id")
    assert raw2.headers.get("x-request-id") != rid


def test_request_id_is_echoed(client: openai.OpenAI):
    sent = f"e2e-{uuid.uuid4().hex}"
    raw = client.chat.completions.with_raw_response.create(
        model="mock-echo",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": sent},
    )
    assert raw.headers.get("x-request-id") == sent
    assert raw.parse().choices[0].message.content == "hi"


def test_request_id_on_errors_and_other_endpoints(client: openai.OpenAI, gateway):
    sent = f"e2e-{uuid.uuid4().hex}"
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.chat.completions.create(
            model="other-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": sent},
        )
    assert exc.value.response.headers.get("x-request-id") == sent
    assert exc.value.request_id == sent

    raw = client.models.with_raw_response.list()
    assert raw.headers.get("x-request-id")
    raw = client.embeddings.with_raw_response.create(model="mock-echo", input="a")
    assert raw.headers.get("x-request-id")


# --- responses API ----------------------------------------------------------------------------


def test_responses_create(client: openai.OpenAI):
    res = client.responses.create(model="mock-echo", input="hello there")
    assert res.output_text == "hello there"
    assert res.model == "mock-echo"
    assert res.status == "completed"
    assert res.usage is not None
    assert res.usage.input_tokens == mock_tokens("hello there")
    assert res.usage.output_tokens == mock_tokens("hello there")
    assert res.usage.total_tokens == res.usage.input_tokens + res.usage.output_tokens


def test_responses_create_with_message_items(client: openai.OpenAI):
    res = client.responses.create(
        model="mock-echo",
        input=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "second question"},
        ],
    )
    assert res.output_text == "second question"


def test_responses_max_output_tokens(client: openai.OpenAI):
    res = client.responses.create(
        model="mock-echo", input="one two three four", max_output_tokens=2
    )
    assert res.status == "incomplete"
    assert res.incomplete_details is not None
    assert res.incomplete_details.reason == "max_output_tokens"
    assert res.output_text == "one two "


def test_responses_stream(client: openai.OpenAI):
    text = "hello there streaming world"
    stream = client.responses.create(model="mock-echo", input=text, stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 4
    assert "".join(deltas) == text
    done = [e for e in events if e.type == "response.output_text.done"]
    assert len(done) == 1 and done[0].text == text
    assert events[-1].response.output_text == text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_disallowed_model(client: openai.OpenAI):
    with pytest.raises(openai.PermissionDeniedError):
        client.responses.create(model="other-model", input="hi")
