#!/usr/bin/env python3
"""Streaming chat-completion client for bench/peers.sh: time to first token and inter-chunk gaps.

Stdlib only (asyncio streams, HTTP/1.1 keep-alive). Each worker keeps one connection and sends
one streaming POST after another; the response (chunked, Content-Length or close-delimited) is
decoded as it arrives and every SSE `data:` event is timestamped when the read that completed it
returns (events that arrive in one read share a timestamp: the client cannot tell them apart).

- TTFT: from just before the request is written to the first `data:` event that is not [DONE].
- inter-chunk gap: between consecutive non-[DONE] `data:` events of one stream.

A stream counts as an error unless it is HTTP 200, holds at least `--chunks` data events, none
of them an error object, and ends with `data: [DONE]`.

  python3 sse_client.py --url http://127.0.0.1:PORT/v1/chat/completions --body body.json \
      [--header 'Authorization: Bearer sk-…'] [--duration 5] [--max-streams 2000] \
      [--concurrency 1] [--chunks 200] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from urllib.parse import urlsplit


class StreamError(Exception):
    pass


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


class Connection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def ensure(self) -> None:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class SSEParser:
    """Splits decoded body bytes into SSE events and timestamps the `data:` ones."""

    def __init__(self) -> None:
        self.buf = b""
        self.times: list[int] = []  # ns, content events only
        self.done = False
        self.error_event = False

    def feed(self, data: bytes, now: int) -> None:
        self.buf += data
        while True:
            cut = self._event_end()
            if cut is None:
                return
            end, sep = cut
            event, self.buf = self.buf[:end], self.buf[end + sep:]
            for line in event.splitlines():
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.done = True
                else:
                    if payload.startswith(b'{"error"'):
                        self.error_event = True
                    self.times.append(now)
                break

    def _event_end(self) -> tuple[int, int] | None:
        cands = [(i, len(s)) for s in (b"\n\n", b"\r\n\r\n") if (i := self.buf.find(s)) >= 0]
        return min(cands) if cands else None


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await reader.readline()
    if not line:
        raise StreamError("connection closed before the status line")
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise StreamError(f"bad status line {line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def one_stream(conn: Connection, request: bytes, chunks: int) -> tuple[int, list[int]]:
    """Sends one request and reads its whole answer. Returns (t_start_ns, event times)."""
    await conn.ensure()
    assert conn.reader is not None and conn.writer is not None
    reader, writer = conn.reader, conn.writer
    t0 = time.perf_counter_ns()
    writer.write(request)
    await writer.drain()
    status, headers = await read_head(reader)
    parser = SSEParser()
    keep_alive = headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise StreamError("connection closed inside a chunked body")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            data = await reader.readexactly(size + 2)
            parser.feed(data[:-2], time.perf_counter_ns())
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            data = await reader.read(min(left, 65536))
            if not data:
                raise StreamError("connection closed inside the body")
            left -= len(data)
            parser.feed(data, time.perf_counter_ns())
    else:
        keep_alive = False
        while data := await reader.read(65536):
            parser.feed(data, time.perf_counter_ns())
    if not keep_alive:
        conn.close()
    if status != 200:
        raise StreamError(f"HTTP {status}")
    if parser.error_event:
        raise StreamError("an error event in the stream")
    if len(parser.times) < chunks or not parser.done:
        raise StreamError(f"{len(parser.times)} data events, [DONE] {'seen' if parser.done else 'missing'}")
    return t0, parser.times


async def run(args: argparse.Namespace) -> dict:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    body = open(args.body, "rb").read()
    head = [f"POST {url.path or '/'} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
            "Accept: text/event-stream", f"Content-Length: {len(body)}"] + list(args.header)
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body

    ttft: list[float] = []
    gaps: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    deadline = started + args.duration
    count = 0

    async def worker() -> None:
        nonlocal count
        conn = Connection(host, port)
        try:
            while time.perf_counter() < deadline and count < args.max_streams:
                count += 1
                try:
                    t0, times = await asyncio.wait_for(one_stream(conn, request, args.chunks), args.timeout)
                except (StreamError, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    continue
                ttft.append((times[0] - t0) / 1000)
                gaps.extend((b - a) / 1000 for a, b in zip(times, times[1:]))
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    ttft.sort()
    gaps.sort()
    return {
        "streams": len(ttft),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "elapsed_s": elapsed,
        "streams_per_s": len(ttft) / elapsed if elapsed else 0.0,
        "ttft_us": {p: percentile(ttft, float(p)) for p in ("50", "90", "99")},
        "gap_us": {p: percentile(gaps, float(p)) for p in ("50", "90", "99")},
        "gaps": len(gaps),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", required=True, help="file with the JSON body (with \"stream\":true)")
    ap.add_argument("--header", action="append", default=[], help="extra request header, 'Name: value'")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds to keep starting streams")
    ap.add_argument("--max-streams", type=int, default=100000)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--chunks", type=int, default=200, help="data events a complete stream has at least")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds one stream may take")
    ap.add_argument("--json", help="write the result here as JSON (else to stdout)")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=1)
    if args.json:
        open(args.json, "w").write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
