-- wrk script: POSTs the JSON bodies of a file (one per line) in turn; each wrk thread starts at
-- its own offset so that threads do not send the same bodies. Prints a JSON summary at the end.
local bodies = {}
local index = 0
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  index = math.floor(#bodies * id / math.max(1, counter))
end

function request()
  index = index + 1
  if index > #bodies then index = 1 end
  -- the path is the URL's: /v1/join or the TokenReview endpoint
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[index])
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, ' ..
    '"max_ms": %.3f, "non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
