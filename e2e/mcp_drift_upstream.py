"""A stdio MCP server (official Python SDK, `mcp` 2.x MCPServer) whose tool definitions come from
a JSON state file read at start-up, so a test can change what the next spawned process serves:

    python e2e/mcp_drift_upstream.py STATE_FILE

The state file holds {"transfer_description": str, "transfer_max": int | null,
"lookup_name": str}. `transfer(amount, to)` carries the description and, when transfer_max is
set, a `maximum` on amount; `lookup(key)` is served under lookup_name (a rename when it changes).
The gateway spawns one process per client session, so each new session sees the file as it is.
"""

import json
import sys
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field


def build(state: dict) -> MCPServer:
    mcp = MCPServer("drifty", version="1.0.0", log_level="WARNING")
    limit = state.get("transfer_max")
    amount_type = Annotated[int, Field(le=limit)] if limit is not None else int

    def transfer(amount: amount_type, to: str) -> str:  # type: ignore[valid-type]
        return f"sent {amount} to {to}"

    mcp.add_tool(transfer, name="transfer", description=state["transfer_description"])

    def lookup(key: str) -> str:
        return f"value of {key}"

    mcp.add_tool(lookup, name=state["lookup_name"], description="Look a key up.")
    return mcp


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        state = json.load(f)
    build(state).run("stdio")


if __name__ == "__main__":
    main()
