-- wrk script for http_capacity.py: one 2026-07-28 `tools/call` of `echo` per request, no session.
--
--   CALL_IDS=IDS_FILE wrk -t T -c C -d D -s call.lua URL -- FIRST TOKEN STRIDE
--
-- The request carries what the SDK's modern entry checks: the per-request `_meta` envelope
-- (protocol version, client capabilities) and the MCP-Protocol-Version, Mcp-Method and Mcp-Name
-- headers that must match it. Each thread numbers its own orders from FIRST + STRIDE * thread, so
-- that no order id repeats. A response counts as a completed call only if it is a 200 whose result
-- echoes its order id without an error; those ids go to IDS_FILE (one a line) for the ledger check.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  local first = tonumber(args[1]) or 0
  local token = args[2] or ""
  local stride = tonumber(args[3]) or 100000
  n = 0
  ok_ids = {}
  bad = 0
  sample = nil
  base = first + stride * (thread_number - 1)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json, text/event-stream"
  wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
  wrk.headers["Mcp-Method"] = "tools/call"
  wrk.headers["Mcp-Name"] = "echo"
  if token ~= "" and token ~= "-" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
end

function request()
  local order = base + n
  n = n + 1
  local amount = 1 + (order % 997) * 0.37
  local body = string.format(
    '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo",'
      .. '"arguments":{"order_id":"ORD-%06d","amount":%.2f},"_meta":{'
      .. '"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
      .. '"io.modelcontextprotocol/clientCapabilities":{},'
      .. '"io.modelcontextprotocol/clientInfo":{"name":"wrk","version":"4"}}}}',
    n, order, amount)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  local order = status == 200 and not body:find('"isError":true', 1, true)
    and not body:find('"error":', 1, true) and body:match('ORD%-(%d+)')
  if order then
    ok_ids[#ok_ids + 1] = tonumber(order)
  else
    bad = bad + 1
    if sample == nil then sample = status .. " " .. body:sub(1, 300) end
  end
end

function done(summary, latency, requests)
  local ok, wrong, sampled = 0, 0, ""
  local ids_file = os.getenv("CALL_IDS")
  local out = ids_file and io.open(ids_file, "w")
  for _, thread in ipairs(threads) do
    local ids = thread:get("ok_ids")
    ok = ok + #ids
    wrong = wrong + thread:get("bad")
    sampled = sampled .. (thread:get("sample") or "")
    if out then
      for _, id in ipairs(ids) do out:write(id, "\n") end
    end
  end
  if out then out:close() end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"ok":%d,"bad":%d,"non2xx":%d,"connect":%d,'
      .. '"read":%d,"write":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"sample":"%s"}\n',
    summary.requests, summary.duration, ok, wrong, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, (sampled:sub(1, 300):gsub('[%c"\\]', ' '))))
end
