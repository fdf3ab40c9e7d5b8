-- wrk script for benches/load.sh: posts the photos given after `--` in turn, each as a
-- multipart upload.
--   wrk -t T -c C -d SECONDS --timeout 600s -s benches/load.lua URL -- FIELD EXTRA PHOTO...
-- FIELD is the file's form field (`image_file`, `file`); EXTRA is `name=value,…` or `-`.
-- Prints one `RESULT …` line: responses, seconds, images/s (200s only), p50/p95/p99 latency
-- (ms, every response), responses by status, socket errors.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local boundary = "cutout-load-7d3f0a"
local bodies = {}
local next_body = 1
statuses = {}

local function multipart(field, extra, path)
  local file = assert(io.open(path, "rb"))
  local data = file:read("*a")
  file:close()
  local parts = {}
  if extra ~= "-" then
    for name, value in string.gmatch(extra, "([^=,]+)=([^,]*)") do
      table.insert(parts, "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\""
        .. name .. "\"\r\n\r\n" .. value .. "\r\n")
    end
  end
  table.insert(parts, "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\""
    .. field .. "\"; filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n" .. data
    .. "\r\n--" .. boundary .. "--\r\n")
  return table.concat(parts)
end

function init(args)
  local field, extra = args[1], args[2]
  for i = 3, #args do
    table.insert(bodies, multipart(field, extra, args[i]))
  end
  -- Threads start at different photos so they do not post the same one in step.
  next_body = (math.random(#bodies) - 1) % #bodies + 1
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
  -- cutout's key (rembg ignores the header).
  local key = os.getenv("CUTOUT_KEY")
  if key then wrk.headers["X-Api-Key"] = key end
end

function request()
  local body = bodies[next_body]
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local listed = {}
  for status, n in pairs(counts) do
    table.insert(listed, status .. ":" .. n)
  end
  table.sort(listed)
  local seconds = summary.duration / 1e6
  local socket = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  io.write(string.format(
    "RESULT responses=%d seconds=%.2f images_per_s=%.3f p50=%.0f p95=%.0f p99=%.0f statuses=%s socket_errors=%d\n",
    summary.requests, seconds, (counts[200] or 0) / seconds,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    table.concat(listed, ","), socket))
end
