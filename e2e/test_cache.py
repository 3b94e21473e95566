"""The exact response cache through the openai SDK: a cached stream replays as a correct
stream (same text, finish reason and usage), and a hit says so in `x-tollgate-cache`."""

from __future__ import annotations

import uuid


def _stream(client, prompt: str):
    raw = client.chat.completions.with_raw_response.create(
        model="cached-echo",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in raw.parse():
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    return raw.headers.get("x-tollgate-cache"), text, finish, usage


def test_a_cached_stream_replays_through_the_sdk(full_client):
    prompt = f"please repeat these words {uuid.uuid4().hex}"
    first = _stream(full_client, prompt)
    second = _stream(full_client, prompt)
    assert first[0] == "miss"
    assert second[0] == "hit"
    assert second[1] == first[1] == prompt
    assert second[2] == first[2] == "stop"
    assert second[3].prompt_tokens == first[3].prompt_tokens
    assert second[3].completion_tokens == first[3].completion_tokens


def test_a_cached_answer_serves_json_clients(full_client):
    prompt = f"json please {uuid.uuid4().hex}"
    _stream(full_client, prompt)
    raw = full_client.chat.completions.with_raw_response.create(
        model="cached-echo", messages=[{"role": "user", "content": prompt}]
    )
    assert raw.headers.get("x-tollgate-cache") == "hit"
    assert raw.parse().choices[0].message.content == prompt
