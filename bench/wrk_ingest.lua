-- wrk script of bench/http_ingest.py: POST /api/ingest/backup with a different body each time.
--
-- Arguments after wrk's `--`: the API key, the mode (`valid`, or `invalid` for bodies that are
-- well-formed JSON but fail validation), and a tag that is unique per wrk run on one server.
--
-- Every valid body is new to the server: (job, timestamp) is bmserver's idempotency key, and a
-- repeat would be answered 200 without a write, so each request gets its own microsecond and the
-- tag goes into the job name (a later run restarts the counter). The timestamps lie an hour in
-- the past, inside the accepted window, and are written with a +02:00 offset as a client east of
-- UTC would send them.
--
-- done() prints one JSON line (latencies in microseconds) that the benchmark parses instead of
-- wrk's text.

local key, mode, tag
local counter = 0
local base_s
local thread_count = 0

function setup(thread)
   -- Each wrk thread has its own Lua state and counter: the thread's id keeps bodies apart.
   thread_count = thread_count + 1
   thread:set("thread_id", thread_count)
end

function init(args)
   key, mode, tag = args[1], args[2] or "valid", args[3] or "run"
   if mode ~= "valid" and mode ~= "invalid" then
      error("mode must be valid or invalid, not " .. tostring(mode))
   end
   tag = tag .. "." .. tostring(thread_id or 1)
   base_s = os.time() - 3600
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["X-Api-Key"] = key
end

local function timestamp(n)
   local seconds = base_s + math.floor(n / 1000000)
   local micros = n % 1000000
   return os.date("!%Y-%m-%dT%H:%M:%S", seconds + 7200) .. string.format(".%06d+02:00", micros)
end

function request()
   counter = counter + 1
   local device = string.format("srv%02d", counter % 10)
   local job = string.format("Nightly Full Backup %s-%d", tag, counter % 50)
   local body
   if mode == "valid" then
      body = string.format(
         '{"deviceName":"%s","jobName":"%s","timestamp":"%s","status":"Success",'
            .. '"message":"Backup completed, request %d. 142 GB transferred.","sender":"bench-wrk"}',
         device, job, timestamp(counter), counter)
   else
      -- Two field errors: status has the wrong type and message is missing.
      body = string.format(
         '{"deviceName":"%s","jobName":"%s","timestamp":"%s","status":%d,"sender":"bench-wrk"}',
         device, job, timestamp(counter), counter)
   end
   return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      '{"wrk":1,"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"status":%.0f,"connect":%.0f,'
         .. '"read":%.0f,"write":%.0f,"timeout":%.0f,"p50_us":%.0f,"p99_us":%.0f}\n',
      summary.requests, summary.duration, summary.bytes, errors.status, errors.connect,
      errors.read, errors.write, errors.timeout, latency:percentile(50), latency:percentile(99)))
end
