#!/usr/bin/env python3
"""Soak: the real gateway under a steady mixed load for a while, checked for leaks and for
bookkeeping that keeps up.

    python bench/soak.py                      # 600 s
    python bench/soak.py --duration 60 --workers 4 --sample-interval 5
    TOLLGATE_BIN=path/to/tollgate python bench/soak.py

It starts tollgate (`TOLLGATE_BIN`, else target/debug/tollgate; SQLite store, logging at warn),
an MCP server (`e2e/mcp_upstream.py`, Streamable HTTP) and an A2A agent (`e2e/a2a_agent.py`),
and runs worker threads that cycle through:

* `chat`: a non-streaming chat completion (the built-in mock, echo checked);
* `stream`: a streamed one, read to `[DONE]` (echo checked);
* `cancel`: a slow stream (20 chunks over 2 s) whose connection is closed after 3 chunks;
* `flaky`: a chat completion on a model whose mock fails 10% of requests with 503 (one attempt,
  no cooldown), so the client sees each injected failure as a 502 naming upstream status 503;
* `mcp`: `tools/call` of the upstream's `echo` (raw JSON-RPC; each worker ends its session with
  DELETE and opens a new one every 25 calls);
* `a2a`: `message/send` (JSON-RPC, A2A 0.3) to the agent (echo checked).

Every model request carries its own `x-request-id`. Every `--sample-interval` seconds the
gateway's RSS (`VmRSS`) and open file descriptors are sampled from /proc. At the end it checks:

1. no errors but the injected ones (which are counted apart, and whose rate must be plausible
   for the configured 10%);
2. RSS steady: after a warm-up of the first 20% of the run, the highest RSS in the last third
   of the rest is at most the highest of its middle third plus 10% and 8 MiB;
3. open fds steady: the last sample is within max(16, 20%) of the first one after the warm-up;
4. the ledger complete (`GET /admin/v1/ledger`, paged): exactly one record per model request
   made, found by request id, with the status the client saw; injected failures recorded as
   `error`; cancelled streams recorded too (the gateway records a stream the client dropped, as
   `cancelled`, or `ok` when it had already ended); `/admin/v1/spend` and `/admin/v1/stats`
   totals agree;
5. the audit chain complete and intact: one `mcp.tools/call` record per tool call and one
   `a2a.call` per agent call (`GET /admin/v1/audit`), and `GET /admin/v1/audit/verify` intact.

It prints a summary table and exits 1 on any failure. `e2e/test_soak_short.py` runs it for 20 s
in the test suite through `run_soak`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

REPO = Path(__file__).resolve().parent.parent
E2E = REPO / "e2e"
if str(E2E) not in sys.path:
    sys.path.insert(0, str(E2E))

from conftest import CONFIG_HEAD, MASTER_KEY, Gateway, launch_gateway  # noqa: E402
from mcp_client_util import start_upstream  # noqa: E402
from test_a2a_gateway import start_agent  # noqa: E402

ERROR_RATE = 0.1
ERROR_STATUS = 503
MCP_SESSION_CALLS = 25
CANCEL_AFTER_CHUNKS = 3
TIMEOUT = 30.0
WARMUP_FRACTION = 0.2
RSS_MARGIN_BYTES = 8 * 1024 * 1024
RSS_MARGIN_FRACTION = 0.10
FD_MARGIN = 16
FD_MARGIN_FRACTION = 0.20
KINDS = ["chat", "stream", "cancel", "flaky", "mcp", "a2a"]
MODEL_KINDS = {"chat", "stream", "cancel", "flaky"}

CONFIG = CONFIG_HEAD + """\
logging:
  level: warn
providers:
  - name: steady
    kind: mock
    mock:
      chunks: 8
  - name: slow
    kind: mock
    mock:
      chunks: 20
      latency: 2s
  - name: flaky
    kind: mock
    mock:
      error_rate: {error_rate}
      error_status: {error_status}
models:
  - name: soak-echo
    targets: [{{provider: steady, model: echo}}]
  - name: soak-slow
    targets: [{{provider: slow, model: echo}}]
  # One attempt and no cooldown: every injected failure reaches the client as it is.
  - name: soak-flaky
    targets: [{{provider: flaky, model: echo}}]
    retry: {{attempts: 1}}
    cooldown: {{failures: 1000000}}
mcp:
  servers:
    - name: tools
      url: {mcp}
a2a:
  agents:
    - name: echo
      url: {agent}
"""


# --- results -----------------------------------------------------------------------------------


@dataclass
class Call:
    kind: str
    ok: bool
    injected: bool
    status: int | None
    seconds: float
    request_id: str | None = None
    error: str | None = None


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss: int  # bytes
    fds: int


@dataclass
class SoakResult:
    duration: float
    workers: int
    calls: list[Call] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        rows = [("kind", "requests", "ok", "injected", "errors", "p50 ms", "p99 ms")]
        for kind in KINDS:
            calls = [c for c in self.calls if c.kind == kind]
            lat = sorted(c.seconds * 1000 for c in calls)
            rows.append(
                (
                    kind,
                    str(len(calls)),
                    str(sum(c.ok for c in calls)),
                    str(sum(c.injected for c in calls)),
                    str(sum(not c.ok and not c.injected for c in calls)),
                    f"{percentile(lat, 0.5):.1f}" if lat else "-",
                    f"{percentile(lat, 0.99):.1f}" if lat else "-",
                )
            )
        total = self.calls
        rows.append(
            (
                "total",
                str(len(total)),
                str(sum(c.ok for c in total)),
                str(sum(c.injected for c in total)),
                str(sum(not c.ok and not c.injected for c in total)),
                "",
                "",
            )
        )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(cell.rjust(w) if j else cell.ljust(w) for j, (cell, w) in enumerate(zip(r, widths))))
            if i == 0 or i == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        if self.samples:
            rss = [s.rss for s in self.samples]
            fds = [s.fds for s in self.samples]
            lines.append("")
            lines.append(
                f"RSS MiB: min {min(rss) / 2**20:.1f}  max {max(rss) / 2**20:.1f}  last {rss[-1] / 2**20:.1f}"
                f"   fds: min {min(fds)}  max {max(fds)}  last {fds[-1]}   samples: {len(self.samples)}"
            )
        rate = len(self.calls) / self.duration if self.duration else 0
        lines.append(f"duration {self.duration:.1f} s, {self.workers} workers, {rate:.1f} requests/s")
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.failures:
            lines.append(f"FAILED ({len(self.failures)}):")
            lines.extend(f"  - {f}" for f in self.failures)
        else:
            lines.append("PASSED")
        return "\n".join(lines)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


# --- processes ---------------------------------------------------------------------------------


def sample(pid: int, t: float) -> Sample:
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    return Sample(t=t, rss=rss, fds=len(os.listdir(f"/proc/{pid}/fd")))


# --- the load ----------------------------------------------------------------------------------


def is_injected(status: int, body: str) -> bool:
    """An injected failure: the mock's 503, mapped to 502 with the upstream status named."""
    return status == 502 and f"upstream status {ERROR_STATUS}" in body and "error injected by the mock provider" in body


class Worker:
    def __init__(self, gw: Gateway, index: int, run_id: str, key: str, record: Callable[[Call], None]) -> None:
        self.gw = gw
        self.index = index
        self.run_id = run_id
        self.key = key
        self.record = record
        self.n = 0
        self.http = httpx.Client(timeout=TIMEOUT, headers={"Authorization": f"Bearer {key}"})
        self.mcp_session: str | None = None
        self.mcp_calls_in_session = 0

    def close(self) -> None:
        try:
            self.end_mcp_session()
        except Exception as e:  # noqa: BLE001 (a failed DELETE is an error of the run)
            self.record(Call("mcp", False, False, None, 0.0, None, f"ending the MCP session: {e}"))
        finally:
            self.http.close()

    def next_id(self, kind: str) -> str:
        self.n += 1
        return f"soak-{self.run_id}-{self.index}-{self.n}-{kind}"

    def run(self, kind: str) -> None:
        started = time.monotonic()
        rid = self.next_id(kind) if kind in MODEL_KINDS else None
        try:
            call = getattr(self, f"do_{kind}")(rid)
        except Exception as e:  # noqa: BLE001 (every failure is a result)
            call = Call(kind, False, False, None, 0.0, rid, f"{type(e).__name__}: {e}")
        call.seconds = time.monotonic() - started
        call.request_id = rid
        self.record(call)

    # Model calls.

    def _chat_body(self, model: str, text: str, stream: bool) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}

    def do_chat(self, rid: str) -> Call:
        text = f"soak chat {self.n}"
        res = self.http.post(f"{self.gw.base_url}/chat/completions", json=self._chat_body("soak-echo", text, False), headers={"x-request-id": rid})
        if res.status_code != 200:
            return Call("chat", False, False, res.status_code, 0, error=res.text[:300])
        got = res.json()["choices"][0]["message"]["content"]
        if got != text:
            return Call("chat", False, False, 200, 0, error=f"echo {got!r} != {text!r}")
        return Call("chat", True, False, 200, 0)

    def _read_stream(self, res: httpx.Response, stop_after: int | None) -> tuple[str, int, bool]:
        text, chunks, done = "", 0, False
        for line in res.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(f"stream error event: {data[:300]}")
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    text += piece
                    chunks += 1
            if stop_after is not None and chunks >= stop_after:
                break
        return text, chunks, done

    def do_stream(self, rid: str) -> Call:
        text = f"soak stream number {self.n} of worker {self.index}"
        with self.http.stream(
            "POST", f"{self.gw.base_url}/chat/completions", json=self._chat_body("soak-echo", text, True), headers={"x-request-id": rid}
        ) as res:
            if res.status_code != 200:
                res.read()
                return Call("stream", False, False, res.status_code, 0, error=res.text[:300])
            got, chunks, done = self._read_stream(res, None)
        if not done or got != text:
            return Call("stream", False, False, 200, 0, error=f"stream ended early or wrong: done={done} {got!r} != {text!r}")
        return Call("stream", True, False, 200, 0)

    def do_cancel(self, rid: str) -> Call:
        text = "soak cancel " + " ".join(f"w{i}" for i in range(20))
        # Its own connection, closed mid-stream: the gateway sees the client go away.
        with httpx.Client(timeout=TIMEOUT, headers={"Authorization": f"Bearer {self.key}"}) as own:
            with own.stream(
                "POST", f"{self.gw.base_url}/chat/completions", json=self._chat_body("soak-slow", text, True), headers={"x-request-id": rid}
            ) as res:
                if res.status_code != 200:
                    res.read()
                    return Call("cancel", False, False, res.status_code, 0, error=res.text[:300])
                got, chunks, done = self._read_stream(res, CANCEL_AFTER_CHUNKS)
        if chunks < CANCEL_AFTER_CHUNKS or done:
            return Call("cancel", False, False, 200, 0, error=f"slow stream gave {chunks} chunks, done={done} before the cancel")
        return Call("cancel", True, False, 200, 0)

    def do_flaky(self, rid: str) -> Call:
        text = f"soak flaky {self.n}"
        res = self.http.post(f"{self.gw.base_url}/chat/completions", json=self._chat_body("soak-flaky", text, False), headers={"x-request-id": rid})
        if res.status_code == 200 and res.json()["choices"][0]["message"]["content"] == text:
            return Call("flaky", True, False, 200, 0)
        if is_injected(res.status_code, res.text):
            return Call("flaky", False, True, res.status_code, 0)
        return Call("flaky", False, False, res.status_code, 0, error=res.text[:300])

    # Tools.

    def _mcp_post(self, body: dict[str, Any], session: str | None) -> httpx.Response:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        if session:
            headers["Mcp-Session-Id"] = session
            headers["MCP-Protocol-Version"] = "2025-06-18"
        return self.http.post(f"{self.gw.origin}/mcp", json=body, headers=headers)

    @staticmethod
    def _rpc_answer(res: httpx.Response) -> dict[str, Any]:
        """The JSON-RPC answer: the body, or the last SSE `data:` message with an id."""
        if res.headers.get("content-type", "").startswith("text/event-stream"):
            answer = None
            for line in res.text.splitlines():
                if line.startswith("data:") and line[5:].strip():
                    msg = json.loads(line[5:])
                    if "id" in msg:
                        answer = msg
            if answer is None:
                raise RuntimeError(f"no answer in the SSE stream: {res.text[:300]}")
            return answer
        return res.json()

    def start_mcp_session(self) -> str:
        res = self._mcp_post(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "soak", "version": "0"}},
            },
            None,
        )
        if res.status_code != 200:
            raise RuntimeError(f"MCP initialize: {res.status_code} {res.text[:300]}")
        session = res.headers["mcp-session-id"]
        res = self._mcp_post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
        if res.status_code not in (200, 202):
            raise RuntimeError(f"MCP initialized notification: {res.status_code} {res.text[:300]}")
        self.mcp_session, self.mcp_calls_in_session = session, 0
        return session

    def end_mcp_session(self) -> None:
        if self.mcp_session is None:
            return
        session, self.mcp_session = self.mcp_session, None
        with contextlib.suppress(httpx.HTTPError):
            res = self.http.delete(
                f"{self.gw.origin}/mcp", headers={"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
            )
            if res.status_code != 200:
                raise RuntimeError(f"MCP DELETE: {res.status_code} {res.text[:300]}")

    def do_mcp(self, rid: None) -> Call:
        if self.mcp_session is not None and self.mcp_calls_in_session >= MCP_SESSION_CALLS:
            self.end_mcp_session()
        session = self.mcp_session or self.start_mcp_session()
        self.mcp_calls_in_session += 1
        text = f"soak tool {self.n}-{self.mcp_calls_in_session}"
        res = self._mcp_post(
            {"jsonrpc": "2.0", "id": 1000 + self.mcp_calls_in_session, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": text}}},
            session,
        )
        if res.status_code != 200:
            return Call("mcp", False, False, res.status_code, 0, error=res.text[:300])
        answer = self._rpc_answer(res)
        result = answer.get("result") or {}
        got = "".join(c.get("text", "") for c in result.get("content", []))
        if result.get("isError") or got != text:
            return Call("mcp", False, False, 200, 0, error=json.dumps(answer)[:300])
        return Call("mcp", True, False, 200, 0)

    # Agents.

    def do_a2a(self, rid: None) -> Call:
        text = f"soak agent {self.index}-{self.n}"
        message = {"kind": "message", "messageId": str(uuid.uuid4()), "role": "user", "parts": [{"kind": "text", "text": text}]}
        res = self.http.post(
            f"{self.gw.origin}/a2a/echo/a2a/jsonrpc",
            json={"jsonrpc": "2.0", "id": self.n, "method": "message/send", "params": {"message": message}},
            headers={"A2A-Version": "0.3"},
        )
        if res.status_code != 200:
            return Call("a2a", False, False, res.status_code, 0, error=res.text[:300])
        body = res.json()
        state = ((body.get("result") or {}).get("status") or {}).get("state")
        if "error" in body or state != "completed" or f"echo: {text}" not in res.text:
            return Call("a2a", False, False, 200, 0, error=res.text[:300])
        return Call("a2a", True, False, 200, 0)


# --- checks ------------------------------------------------------------------------------------


def check_steady(result: SoakResult) -> None:
    samples = result.samples
    warm = [s for s in samples if s.t >= WARMUP_FRACTION * result.duration]
    if len(warm) < 6:
        result.failures.append(f"only {len(warm)} samples after the warm-up: run longer or sample more often")
        return
    span_start, span_end = warm[0].t, warm[-1].t
    third = (span_end - span_start) / 3
    middle = [s for s in warm if span_start + third <= s.t < span_start + 2 * third]
    last = [s for s in warm if s.t >= span_start + 2 * third]
    if not middle or not last:
        result.failures.append("too few samples to compare the middle and last thirds")
        return
    middle_max = max(s.rss for s in middle)
    last_max = max(s.rss for s in last)
    allowed = middle_max * (1 + RSS_MARGIN_FRACTION) + RSS_MARGIN_BYTES
    result.notes.append(
        f"RSS after warm-up: middle third max {middle_max / 2**20:.1f} MiB, last third max {last_max / 2**20:.1f} MiB "
        f"(allowed {allowed / 2**20:.1f})"
    )
    if last_max > allowed:
        result.failures.append(
            f"RSS grew: last third max {last_max / 2**20:.1f} MiB > middle third max {middle_max / 2**20:.1f} MiB + 10% + 8 MiB"
        )
    baseline = warm[0].fds
    final = samples[-1].fds
    margin = max(FD_MARGIN, int(baseline * FD_MARGIN_FRACTION))
    result.notes.append(f"fds: {baseline} after warm-up, {final} at the end (margin {margin})")
    if final - baseline > margin:
        result.failures.append(f"open fds grew from {baseline} after the warm-up to {final} at the end (margin {margin})")


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def admin_get(gw: Gateway, path: str) -> Any:
    res = httpx.get(f"{gw.origin}{path}", headers={"Authorization": f"Bearer {gw.master_key}"}, timeout=60)
    res.raise_for_status()
    return res.json()


def read_ledger(gw: Gateway) -> list[dict[str, Any]]:
    rows, after = [], 0
    while True:
        page = admin_get(gw, f"/admin/v1/ledger?after={after}&limit=1000")
        rows.extend(page["data"])
        if page.get("next_after") is None:
            return rows
        after = page["next_after"]


def count_audit(gw: Gateway, action: str) -> int:
    count, before = 0, None
    while True:
        q = f"/admin/v1/audit?action={action}&limit=500" + (f"&before={before}" if before else "")
        page = admin_get(gw, q)
        count += len(page["data"])
        before = page.get("next_before")
        if not before:
            return count


def check_ledger(gw: Gateway, result: SoakResult, run_id: str) -> None:
    model_calls = {c.request_id: c for c in result.calls if c.kind in MODEL_KINDS and c.request_id}
    # Requests that never got an answer are already failures; the rest must each be recorded.
    answered = {rid: c for rid, c in model_calls.items() if c.status is not None}
    rows: list[dict[str, Any]] = []

    def complete() -> bool:
        nonlocal rows
        rows = [r for r in read_ledger(gw) if str(r.get("request_id", "")).startswith(f"soak-{run_id}-")]
        return set(answered) <= {r["request_id"] for r in rows}

    wait_until(complete, timeout=30)
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_id[r["request_id"]].append(r)
    missing = sorted(set(answered) - set(by_id))
    duplicated = sorted(rid for rid, rs in by_id.items() if len(rs) > 1)
    unknown = sorted(set(by_id) - set(model_calls))
    outcomes = Counter(r["outcome"] for r in rows)
    result.notes.append(f"ledger: {len(rows)} records for {len(answered)} answered model requests; outcomes {dict(outcomes)}")
    if missing:
        kinds = Counter(model_calls[m].kind for m in missing)
        result.failures.append(f"ledger: {len(missing)} model requests have no record (by kind {dict(kinds)}), e.g. {missing[:3]}")
    if duplicated:
        result.failures.append(f"ledger: {len(duplicated)} requests recorded more than once, e.g. {duplicated[:3]}")
    if unknown:
        result.failures.append(f"ledger: {len(unknown)} records for request ids the load never sent, e.g. {unknown[:3]}")
    wrong = []
    for rid, c in answered.items():
        for r in by_id.get(rid, []):
            if c.kind == "cancel":
                expected_outcomes = {"cancelled", "ok"}
            elif c.injected:
                expected_outcomes = {"error"}
            elif c.ok:
                expected_outcomes = {"ok"}
            else:
                continue  # an unexpected failure, already reported
            if r["status"] != c.status or r["outcome"] not in expected_outcomes:
                wrong.append(f"{rid}: client saw {c.status}, ledger says {r['status']} {r['outcome']}")
    if wrong:
        result.failures.append(f"ledger: {len(wrong)} records disagree with what the client saw, e.g. {wrong[:3]}")

    spend = admin_get(gw, "/admin/v1/spend")
    stats = admin_get(gw, "/admin/v1/stats?since=24h")
    if spend.get("total_requests") != len(rows):
        result.failures.append(f"spend report counts {spend.get('total_requests')} requests, the ledger holds {len(rows)}")
    totals = stats.get("totals", {})
    injected = sum(c.injected for c in result.calls)
    if totals.get("requests") != len(rows):
        result.failures.append(f"stats count {totals.get('requests')} requests, the ledger holds {len(rows)}")
    if totals.get("errors") != injected + sum(1 for c in answered.values() if not c.ok and not c.injected and c.status != 200):
        result.failures.append(f"stats count {totals.get('errors')} errors; the load saw {injected} injected failures")


def check_audit(gw: Gateway, result: SoakResult) -> None:
    tool_calls = sum(1 for c in result.calls if c.kind == "mcp" and c.status is not None)
    agent_calls = sum(1 for c in result.calls if c.kind == "a2a" and c.status is not None)
    counts: dict[str, int] = {}

    def complete() -> bool:
        counts["mcp.tools/call"] = count_audit(gw, "mcp.tools/call")
        counts["a2a.call"] = count_audit(gw, "a2a.call")
        return counts["mcp.tools/call"] >= tool_calls and counts["a2a.call"] >= agent_calls

    wait_until(complete, timeout=30)
    result.notes.append(
        f"audit: {counts['mcp.tools/call']} mcp.tools/call records for {tool_calls} tool calls, "
        f"{counts['a2a.call']} a2a.call records for {agent_calls} agent calls"
    )
    if counts["mcp.tools/call"] != tool_calls:
        result.failures.append(f"audit: {counts['mcp.tools/call']} mcp.tools/call records for {tool_calls} tool calls")
    if counts["a2a.call"] != agent_calls:
        result.failures.append(f"audit: {counts['a2a.call']} a2a.call records for {agent_calls} agent calls")
    verify = admin_get(gw, "/admin/v1/audit/verify")
    result.notes.append(f"audit chain: {verify.get('status')}, {verify.get('records')} records")
    if verify.get("status") != "intact":
        result.failures.append(f"audit chain does not verify: {verify}")


def check_errors(result: SoakResult) -> None:
    errors = [c for c in result.calls if not c.ok and not c.injected]
    if errors:
        by_kind = Counter(c.kind for c in errors)
        examples = "; ".join(f"{c.kind} [{c.status}] {c.error}" for c in errors[:5])
        result.failures.append(f"{len(errors)} errors besides the injected ones (by kind {dict(by_kind)}): {examples}")
    for kind in KINDS:
        if not any(c.kind == kind and c.ok for c in result.calls):
            result.failures.append(f"no successful {kind} request: the load did not run")
    flaky = [c for c in result.calls if c.kind == "flaky"]
    injected = sum(c.injected for c in flaky)
    if flaky:
        n = len(flaky)
        sigma = math.sqrt(n * ERROR_RATE * (1 - ERROR_RATE))
        result.notes.append(f"injected failures: {injected} of {n} flaky requests ({injected / n:.1%}, configured {ERROR_RATE:.0%})")
        if abs(injected - n * ERROR_RATE) > 5 * sigma + 1:
            result.failures.append(f"{injected} injected failures in {n} requests is implausible for a rate of {ERROR_RATE}")
    injected_elsewhere = [c for c in result.calls if c.injected and c.kind != "flaky"]
    if injected_elsewhere:
        result.failures.append(f"{len(injected_elsewhere)} injected-looking failures outside the flaky model")


# --- the run -----------------------------------------------------------------------------------


def run_soak(
    duration: float = 600.0,
    workers: int = 4,
    sample_interval: float = 5.0,
    workdir: Path | None = None,
    out: TextIO | None = sys.stdout,
) -> SoakResult:
    """Runs the soak for `duration` seconds and returns its result (`.failures`, `.summary()`)."""
    result = SoakResult(duration=duration, workers=workers)
    run_id = uuid.uuid4().hex[:8]

    def say(msg: str) -> None:
        if out is not None:
            print(msg, file=out, flush=True)

    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tollgate-soak-")))
        mcp = stack.enter_context(start_upstream("streamable-http", name="tools"))
        agent = stack.enter_context(start_agent("soak-agent")).url
        config = CONFIG.format(
            master=MASTER_KEY,
            db=workdir / "tollgate.db",
            error_rate=ERROR_RATE,
            error_status=ERROR_STATUS,
            mcp=mcp.url,
            agent=agent,
        )
        gw = stack.enter_context(launch_gateway(workdir, config))
        assert gw.proc is not None
        pid = gw.proc.pid
        res = httpx.post(
            f"{gw.origin}/admin/v1/keys",
            json={"name": f"soak-{run_id}"},
            headers={"Authorization": f"Bearer {gw.master_key}"},
            timeout=TIMEOUT,
        )
        res.raise_for_status()
        key = res.json()["secret"]
        say(f"soak: tollgate pid {pid} at {gw.origin}; {workers} workers for {duration:.0f} s")

        lock = threading.Lock()

        def record(call: Call) -> None:
            with lock:
                result.calls.append(call)

        stop = threading.Event()
        started = time.monotonic()
        result.samples.append(sample(pid, 0.0))

        def sampler() -> None:
            while not stop.wait(sample_interval):
                t = time.monotonic() - started
                try:
                    s = sample(pid, t)
                except OSError:
                    return  # the gateway is gone: the checks will say so
                with lock:
                    result.samples.append(s)
                    n = len(result.calls)
                say(f"  t={t:6.1f}s  requests {n:7d}  RSS {s.rss / 2**20:7.1f} MiB  fds {s.fds}")

        def work(index: int) -> None:
            w = Worker(gw, index, run_id, key, record)
            try:
                kinds = KINDS[index % len(KINDS) :] + KINDS[: index % len(KINDS)]
                i = 0
                while not stop.is_set():
                    w.run(kinds[i % len(kinds)])
                    i += 1
            finally:
                w.close()

        threads = [threading.Thread(target=sampler, name="soak-sampler", daemon=True)]
        threads += [threading.Thread(target=work, args=(i,), name=f"soak-worker-{i}", daemon=True) for i in range(workers)]
        for t in threads:
            t.start()
        stop.wait(duration)
        stop.set()
        for t in threads:
            t.join(timeout=TIMEOUT + 10)
        result.duration = time.monotonic() - started
        final = sample(pid, result.duration) if gw.proc.poll() is None else None
        if final is not None:
            result.samples.append(final)
        if gw.proc.poll() is not None:
            result.failures.append(f"tollgate exited during the soak with status {gw.proc.returncode}")
        else:
            check_errors(result)
            check_steady(result)
            check_ledger(gw, result, run_id)
            check_audit(gw, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent workers (default 4)")
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds between RSS/fd samples (default 5)")
    parser.add_argument("--workdir", type=Path, help="keep the gateway's files here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    result = run_soak(args.duration, args.workers, args.sample_interval, args.workdir)
    print()
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
