-- wrk script for benchmarks/ingest.py: POST /api/v1/messages bodies with distinct external ids.
--
-- Arguments (after `--` on the wrk command line): <bearer token> <label> <customers>.
-- Every request gets external_id "<label>-<thread>-<n>" (n counts per thread), and a sender drawn at random
-- from <customers> email addresses of that label, so a run mixes new cases (a customer's first message) with
-- follow-ups. done() prints one machine-readable line: "WRK_JSON {...}", latencies in microseconds;
-- status_errors is wrk's count of answers with an HTTP status of 400 or more.

local threads = {}

function setup(thread)
   thread:set("thread_number", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   token, label, customers = args[1], args[2], tonumber(args[3])
   headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
   sent = 0
   math.randomseed(thread_number)
end

function request()
   sent = sent + 1
   local customer = math.random(customers)
   local body = string.format(
      '{"external_id":"%s-%d-%d","sender":{"kind":"email","value":"customer%d.%s@example.com"},'
         .. '"display_name":"Customer %d","language":"en",'
         .. '"text":"Hello, my order %d has not arrived yet. Could you check where it is? Thanks."}',
      label, thread_number, sent, customer, label, customer, sent)
   return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
   -- wrk calls request() once on the first thread to validate the script; that request is never sent.
   local written = -1
   for _, thread in ipairs(threads) do
      written = written + thread:get("sent")
   end
   local errors = summary.errors
   io.write(string.format(
      'WRK_JSON {"duration_us":%d,"responses":%d,"written":%d,"status_errors":%d,'
         .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
         .. '"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
      summary.duration, summary.requests, written, errors.status,
      errors.connect, errors.read, errors.write, errors.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
