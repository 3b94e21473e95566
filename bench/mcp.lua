-- wrk script: POST an MCP `tools/call` on an open Streamable HTTP session. MCP_SESSION,
-- MCP_VERSION (default 2025-06-18), MCP_TOOL (default test_simple_text) and API_KEY come from
-- the environment.
--
-- Every request carries its own JSON-RPC id: rmcp's session routes an answer by request id, so
-- two calls in flight under one id (c > 1 on one session) would leave one of them hanging.
-- Answers are checked: a 200 whose body holds no JSON-RPC result, or a tool error, counts as a
-- bad answer (reported by `done` as "Bad MCP answers: N"). Latency is taken before the check.
local session = assert(os.getenv("MCP_SESSION"), "MCP_SESSION is not set")
local version = os.getenv("MCP_VERSION") or "2025-06-18"
local tool = os.getenv("MCP_TOOL") or "test_simple_text"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Session-Id"] = session
wrk.headers["MCP-Protocol-Version"] = version
local key = os.getenv("API_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

-- Per-thread state (each wrk thread has its own Lua state; setup gives each its id range).
id_base = 0
bad = 0
local n = 0

local threads = {}
function setup(thread)
  thread:set("id_base", #threads * 1000000000)
  table.insert(threads, thread)
end

function request()
  n = n + 1
  return wrk.format(nil, nil, nil, string.format(
    '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":{}}}',
    id_base + n, tool))
end

function response(status, headers, body)
  if status == 200 and (not body:find('"result":', 1, true) or body:find('"isError":true', 1, true)) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do
    total = total + (t:get("bad") or 0)
  end
  io.write(string.format("Bad MCP answers: %d\n", total))
end
