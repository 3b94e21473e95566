"""The shared stores of the scale-out tests: a scratch PostgreSQL database and a Redis prefix.

A test module that runs several tollgate replicas on one store imports the module-scoped
`stores` fixture into its own namespace, so pytest registers it there:

    from shared_stores import Stores, stores  # noqa: F401

Needs PostgreSQL (127.0.0.1:5432, user postgres, trust auth, database `test`, and the `psql`
client) and Redis (127.0.0.1:6379). The fixture creates a scratch database and a Redis prefix
and removes both at the end of the module. Without the services the calling module is skipped
(loudly), or fails with TOLLGATE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

PG_HOST, PG_PORT, PG_USER, PG_ADMIN_DB = "127.0.0.1", 5432, "postgres", "test"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
E2E = Path(__file__).resolve().parent


def _unavailable(why: str, module: str) -> None:
    """Fails with TOLLGATE_REQUIRE_SERVICES=1, else skips the calling module (loudly)."""
    message = f"scale-out tests need PostgreSQL and Redis: {why}"
    if os.environ.get("TOLLGATE_REQUIRE_SERVICES") == "1":
        pytest.fail(message, pytrace=False)
    warnings.warn(f"SKIPPING {module}: {message}")
    pytest.skip(f"!!! {message} (set TOLLGATE_REQUIRE_SERVICES=1 to fail instead) !!!")


class Redis:
    """Just enough of a RESP client to check Redis is there and remove the module's keys."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5.0)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def call(self, *args: Any) -> Any:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            data = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        return self._reply()

    def _reply(self) -> Any:
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("redis closed the connection")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {body.decode()}")
        if kind == b":":
            return int(body)
        if kind == b"$":
            n = int(body)
            return None if n < 0 else self.reader.read(n + 2)[:-2]
        if kind == b"*":
            n = int(body)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"redis: unexpected reply {line!r}")

    def delete_prefix(self, prefix: str) -> int:
        """Deletes every key starting with `prefix` (which holds no glob characters)."""
        deleted, cursor = 0, b"0"
        while True:
            cursor, batch = self.call("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000)
            if batch:
                deleted += self.call("DEL", *batch)
            if cursor == b"0":
                return deleted


def psql(database: str, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", database,
         "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )


@dataclass
class Stores:
    database_url: str
    redis_prefix: str


def _module_name(request: pytest.FixtureRequest) -> str:
    """The calling test module as `e2e/<file>.py` (for the skip warning)."""
    path = Path(request.module.__file__).resolve()
    return f"e2e/{path.name}" if path.parent == E2E else str(path)


@pytest.fixture(scope="module")
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    """A scratch PostgreSQL database and Redis prefix, removed after the replicas stop."""
    module = _module_name(request)
    if shutil.which("psql") is None:
        _unavailable("the psql client is not installed", module)
    probe = psql(PG_ADMIN_DB, "SELECT 1")
    if probe.returncode != 0:
        _unavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT} did not answer: {probe.stderr.strip()}", module)
    try:
        redis = Redis(REDIS_HOST, REDIS_PORT)
        assert redis.call("PING") == "PONG"
    except (OSError, AssertionError, RuntimeError) as e:
        _unavailable(f"Redis at {REDIS_HOST}:{REDIS_PORT} did not answer: {e!r}", module)

    tag = uuid.uuid4().hex[:12]
    database = f"tollgate_e2e_{tag}"
    prefix = f"tollgate-e2e:{tag}:"
    try:
        created = psql(PG_ADMIN_DB, f"CREATE DATABASE {database}")
        assert created.returncode == 0, created.stderr
        try:
            yield Stores(f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}", prefix)
        finally:
            dropped = psql(PG_ADMIN_DB, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            redis.delete_prefix(prefix)
            assert dropped.returncode == 0, dropped.stderr
    finally:
        redis.close()
