"""Running out of file descriptors: the gateway keeps serving the connections it has, backs off
instead of spinning while it cannot accept, and serves new connections once descriptors free up.

The real binary's descriptor limit is lowered from outside (`prlimit` on its pid) to a little
above what it uses, then more connections are opened than it can accept.
"""

from __future__ import annotations

import os
import resource
import socket
from pathlib import Path

import httpx

from conftest import CONFIG_HEAD, MASTER_KEY, MOCK_ECHO, launch_gateway, wait_for

CONFIG = CONFIG_HEAD + """\
logging:
  level: warn
""" + MOCK_ECHO


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def chat(client: httpx.Client, origin: str, key: str) -> httpx.Response:
    return client.post(
        f"{origin}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "mock-echo", "messages": [{"role": "user", "content": "still here"}]},
    )


def test_the_gateway_survives_running_out_of_file_descriptors(tmp_path: Path) -> None:
    config = CONFIG.format(master=MASTER_KEY, db=tmp_path / "tollgate.db")
    with launch_gateway(tmp_path, config) as gw:
        assert gw.proc is not None
        pid = gw.proc.pid
        res = gw.admin("POST", "/admin/v1/keys", {"name": "fd"})
        assert res.status_code == 201, res.text
        key = res.json()["secret"]

        # A kept-alive connection opened before the squeeze.
        kept = httpx.Client(timeout=10.0)
        assert chat(kept, gw.origin, key).status_code == 200

        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds(pid) + 8, hard))
        flood: list[socket.socket] = []
        try:
            # The kernel completes these handshakes; the gateway can accept only a few.
            for _ in range(48):
                flood.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
            wait_for("the gateway to hit the limit", lambda: "accept failed" in gw.logs())
            # Out of descriptors, it still serves what it already holds.
            assert chat(kept, gw.origin, key).status_code == 200
            assert gw.proc.poll() is None
        finally:
            for s in flood:
                s.close()
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        kept.close()

        # Descriptors free again: new connections are accepted and served.
        def fresh_call_works() -> bool:
            try:
                with httpx.Client(timeout=5.0) as c:
                    return chat(c, gw.origin, key).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("a new connection to be served", fresh_call_works)
        assert gw.proc.poll() is None
        assert "panicked" not in gw.logs()
        # It backed off rather than spinning: a handful of warnings, not thousands.
        assert gw.logs().count("accept failed") < 500, gw.logs()[-2000:]
