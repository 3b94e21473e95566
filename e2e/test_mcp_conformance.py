"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in
e2e/node/package.json, run on the pinned Node 22) in `server` mode, twice: against the
conforming upstream this repo provides (`tollgate-conformance-server`, written with the official
Rust SDK `rmcp`) directly, and against tollgate fronting it through a prefix-free virtual server
with `auth: none` (the suite sends no credentials). Every scenario, the pending ones included,
must pass through the gateway with zero failures, as it does directly."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CONFIG_HEAD, MASTER_KEY, _binary, launch_gateway

NODE_MODULES = Path(__file__).resolve().parent / "node" / "node_modules"
NODE = NODE_MODULES / "node" / "bin" / "node"
SUITE = NODE_MODULES / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
SERVER = _binary().parent / "tollgate-conformance-server"

pytestmark = pytest.mark.skipif(
    not SUITE.is_file() and not os.environ.get("TOLLGATE_REQUIRE_SERVICES"),
    reason="npm pins not installed: run `npm ci --prefix e2e/node`",
)

CONFIG = CONFIG_HEAD + """\
logging:
  level: warn
mcp:
  prefix: never
  servers:
    - name: conformance
      url: {upstream}
  virtual_servers:
    - name: conformance
      servers: [conformance]
      auth: none
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    proc = subprocess.Popen(
        [str(SERVER), "--port", "0"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.match(r"listening on (http://127\.0\.0\.1:\d+/mcp)", line)
        assert match, f"the conformance server did not start: {line!r}"
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_suite(url: str, out: Path) -> dict[str, dict[str, int]]:
    """Runs every server scenario against `url`; returns each scenario's counts by status."""
    done = subprocess.run(
        [str(NODE), str(SUITE), "server", "--url", url, "--suite", "all", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Total:" in done.stdout, f"the suite did not finish:\n{done.stdout}\n{done.stderr}"
    results: dict[str, dict[str, int]] = {}
    for checks in sorted(out.glob("*/checks.json")):
        scenario = re.sub(r"^server-|-\d{4}-\d{2}-\d{2}T.*$", "", checks.parent.name)
        counts: dict[str, int] = {}
        for check in json.loads(checks.read_text()):
            counts[check["status"]] = counts.get(check["status"], 0) + 1
        results[scenario] = counts
    return results


def failures(results: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {s: c for s, c in results.items() if c.get("FAILURE") or c.get("WARNING")}


def test_the_conformance_suite_passes_through_the_gateway(
    upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    direct = run_suite(upstream, tmp_path_factory.mktemp("conformance-direct"))
    assert len(direct) >= 30, direct
    assert failures(direct) == {}, "the upstream itself must conform"

    workdir = tmp_path_factory.mktemp("conformance-gateway")
    config = CONFIG.format(master=MASTER_KEY, db=workdir / "tollgate.db", upstream=upstream)
    with launch_gateway(workdir, config) as gw:
        through = run_suite(f"{gw.origin}/mcp/conformance", workdir / "results")
    assert set(through) == set(direct), "every scenario ran through the gateway"
    assert failures(through) == {}, through
    # Every scenario that passed checks directly passes checks through the gateway too.
    for scenario, counts in direct.items():
        if counts.get("SUCCESS"):
            assert through[scenario].get("SUCCESS"), (scenario, counts, through[scenario])
