"""Spend governance through the official OpenAI SDK: rate-limit headers and 429s in OpenAI's
shape, budgets refused with `budget_exceeded`, streams priced without leaking usage the client
did not ask for, and spend reports that agree with the ledger."""

from __future__ import annotations

import openai
import pytest


def test_rate_limit_headers_and_429(gateway, make_key):
    client = gateway.client(make_key()["secret"])
    for remaining in ("1", "0"):
        raw = client.chat.completions.with_raw_response.create(
            model="limited-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == remaining
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 100000
        assert raw.parse().choices[0].message.content == "hi"
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(
            model="limited-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 429
    assert e.value.code == "rate_limit_exceeded"
    assert e.value.type == "requests"
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    # Models without a limit are untouched and carry no rate-limit headers.
    raw = client.chat.completions.with_raw_response.create(
        model="mock-echo", messages=[{"role": "user", "content": "hi"}]
    )
    assert "x-ratelimit-limit-requests" not in raw.headers


def test_budget_runs_out_with_budget_exceeded(gateway, make_key):
    created = make_key()
    client = gateway.client(created["secret"])
    served = 0
    with pytest.raises(openai.RateLimitError) as e:
        while True:
            client.chat.completions.create(
                model="budgeted-model",
                messages=[{"role": "user", "content": "spend a little"}],
                max_tokens=3,
            )
            served += 1
            assert served < 200, "the budget never ran out"
    assert served >= 1
    assert e.value.type == "budget_exceeded"
    assert e.value.code == "budget_exceeded"
    assert "resets at" in e.value.message
    assert e.value.response.headers["x-tollgate-budget-reset"].endswith("T00:00:00Z")

    report = gateway.admin(
        "GET", f"/admin/v1/spend?filter_by=key&filter={created['key']['id']}"
    ).json()
    assert report["total_requests"] == served
    # Never more than one request's worth over the limit.
    assert 0.0 < report["total_cost_usd"] <= 0.02 + 0.2
    budgets = gateway.admin("GET", "/admin/v1/budgets").json()["data"]
    mine = next(b for b in budgets if b["name"] == "budgeted-per-key")
    counter = next(c for c in mine["counters"] if c["id"] == created["key"]["id"])
    assert counter["spent_usd"] == pytest.approx(report["total_cost_usd"])


def test_stream_is_priced_without_showing_usage(gateway, make_key):
    created = make_key()
    client = gateway.client(created["secret"])
    stream = client.chat.completions.create(
        model="budgeted-model",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    assert all(c.usage is None for c in chunks)
    rows = gateway.admin("GET", "/admin/v1/ledger?limit=10000").json()["data"]
    row = next(r for r in rows if r["key_id"] == created["key"]["id"])
    assert row["streamed"] is True
    assert row["estimated"] is False
    assert row["completion_tokens"] > 0 and row["prompt_tokens"] > 0
    assert row["cost_usd"] > 0


def test_spend_report_matches_ledger_rows(gateway, full_client):
    for _ in range(3):
        full_client.chat.completions.create(
            model="mock-echo", messages=[{"role": "user", "content": "tally"}]
        )
    rows = gateway.admin("GET", "/admin/v1/ledger?limit=10000").json()["data"]
    report = gateway.admin("GET", "/admin/v1/spend?group_by=key&limit=100000").json()
    by_key: dict = {}
    for r in rows:
        by_key[r["key_id"]] = by_key.get(r["key_id"], 0) + 1
    assert {r["group"]: r["requests"] for r in report["rows"]} == by_key
    assert report["total_requests"] == len(rows)
    csv = gateway.admin("GET", "/admin/v1/spend?group_by=model&format=csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0] == "model,requests,prompt_tokens,completion_tokens,cost_usd"
