"""A short run of the soak (`bench/soak.py`): the real gateway, an MCP server and an A2A agent
under a mixed load for 20 seconds (chat, streams, streams cancelled midway, a model with an
injected 10% failure rate, MCP tool calls, A2A sends), with RSS and fd samples every second.
Passes when `run_soak` finds nothing: no errors besides the injected ones, RSS and fds steady,
every model request in the ledger as the client saw it, the audit chain complete and intact.
The full run (10 minutes) is `python bench/soak.py`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


def load_soak():
    spec = importlib.util.spec_from_file_location("tollgate_bench_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through it
    spec.loader.exec_module(module)
    return module


def test_soak_short(tmp_path: Path) -> None:
    soak = load_soak()
    result = soak.run_soak(duration=20.0, workers=4, sample_interval=1.0, workdir=tmp_path, out=None)
    summary = result.summary()
    print(summary)
    assert result.ok, summary
    assert len(result.calls) >= 60, summary
