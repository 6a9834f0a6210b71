-- wrk script: POST one digits row to the simple JSON face.
-- wrk -t2 -c16 -d10s --timeout 10s --latency -s bench/wrk/post_digits.lua \
--     http://127.0.0.1:8080/v1/models/digits/predict
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("models/digits/example.json", "r"))
local doc = f:read("*a")
f:close()
wrk.body = doc:gsub(', "expected_labels": %[%d+%]', "")
