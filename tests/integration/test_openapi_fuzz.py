"""schemathesis against a real stack, auth on (an admin and predict key), straight to the
edge and briefly through HAProxy: every operation of /openapi.json with generated path
parameters, headers and bodies, then the operations of a real model (so bodies reach
validation, not just the 404 of an unknown model) with data that fits the document and,
for the POSTs, data that does not; and a known-good request per operation, whose 200
must match the document too.

Every answer must be documented for its operation (status, content type, body schema),
and no answer may be a server error other than the documented 503 (with Retry-After)
and 504. Bounded and reproducible: few examples per operation, derandomized, no deadline.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.stacks import create_key

pytestmark = pytest.mark.timeout(240)

CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
# the model routes whose bodies and parameters reach validation when the model is real;
# the management routes that change what is served are fuzzed with made-up names only
REAL_MODEL_ROUTES = ("/ready", "/infer", "/predict", "/stats", "/versions/{version}",
                     "/v2/models/{model}", "/config", ":predict", "/v1/models/{model}")


@pytest.fixture(scope="module")
def fuzzed(module_stacks) -> tuple[Any, str, dict[str, str], str]:
    stack = module_stacks(start=False, FALCON_AUTH_ENABLED="true")
    key = create_key(stack, "fuzz", "--scope", "admin", "--scope", "predict")
    stack.start()
    base = f"http://{stack.settings.edge.bind}"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", wait_for_schema=30)
    return schema, base, {"X-API-Key": key}, f"http://{stack.settings.haproxy.bind}"


def operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def run(operation: Any, base: str, headers: dict[str, str], mode: GenerationMode,
        examples: int, seen: list[int], **fixed: Any) -> None:
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed or None))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        # the key is ours: a generated X-API-Key or Authorization would only test the 401
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() not in ("x-api-key", "authorization")}
        response = case.call(base_url=base, headers=headers, timeout=30)
        status = response.status_code
        seen.append(status)
        if status >= 500:
            assert status in (503, 504), f"{case.method} {case.formatted_path}: {status} " \
                                         f"{response.text[:300]}"
            if status == 503:
                assert response.headers.get("Retry-After"), "503 without Retry-After"
        if mode is GenerationMode.POSITIVE or status != 200:
            case.validate_response(response, checks=CHECKS)
    check()


ROW = [0.0] * 64  # a digits row
TENSOR = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}
DIGITS, V1 = {"model": "digits"}, {"model": "digits", "version": "1"}
# A request each operation answers 200 to, in this order (multi is unloaded, then loaded)
KNOWN_GOOD: list[tuple[str, str, dict[str, str], Any]] = [
    ("GET", "/v2/health/live", {}, None), ("GET", "/v2/health/ready", {}, None),
    ("GET", "/v2", {}, None), ("GET", "/metrics", {}, None),
    ("GET", "/v2/models/{model}", DIGITS, None),
    ("GET", "/v2/models/{model}/versions/{version}", V1, None),
    ("GET", "/v2/models/{model}/ready", DIGITS, None),
    ("GET", "/v2/models/{model}/versions/{version}/ready", V1, None),
    ("GET", "/v2/models/{model}/config", DIGITS, None),
    ("GET", "/v2/models/{model}/versions/{version}/config", V1, None),
    ("POST", "/v2/models/{model}/infer", DIGITS, {"inputs": [TENSOR]}),
    ("POST", "/v2/models/{model}/versions/{version}/infer", V1,
     {"id": "x", "inputs": [TENSOR], "outputs": [
         {"name": "label"}, {"name": "probabilities", "parameters": {"classification": 3}}]}),
    ("POST", "/v1/models/{model}/predict", DIGITS, {"instances": [ROW]}),
    ("POST", "/v1/models/{model}/versions/{version}/predict", V1, {"instances": [ROW, ROW]}),
    ("GET", "/", {}, None),
    ("GET", "/v1/models", {}, None), ("GET", "/v1/models/{model}", DIGITS, None),
    ("POST", "/v1/models/{model}:predict", DIGITS, {"instances": [ROW]}),
    ("GET", "/v2/models/stats", {}, None), ("GET", "/v2/models/{model}/stats", DIGITS, None),
    ("GET", "/v2/models/{model}/versions/{version}/stats", V1, None),
    ("POST", "/v2/repository/index", {}, None),
    ("GET", "/v1/models/{model}/traffic", DIGITS, None),
    ("PUT", "/v1/models/{model}/traffic", DIGITS, {"split": {"1": 100}}),
    ("POST", "/v1/models/{model}/rollback", DIGITS, None),
    ("POST", "/v2/repository/models/{model}/unload", {"model": "multi"},
     {"parameters": {"version": "1"}}),
    ("POST", "/v2/repository/models/{model}/load", {"model": "multi"}, None),
]


def test_every_operation_answers_a_good_request_as_documented(fuzzed):
    schema, base, headers, _ = fuzzed
    ops = {(op.method.upper(), op.path): op for op in operations(schema)}
    assert set(ops) == {(m, p) for m, p, _, _ in KNOWN_GOOD}  # a new route needs a case here
    for method, path, params, body in KNOWN_GOOD:
        payload = {} if body is None else {"body": body, "media_type": "application/json"}
        case = ops[method, path].Case(path_parameters=params, **payload)
        response = case.call(base_url=base, headers=headers, timeout=30)
        assert response.status_code == 200, f"{method} {path}: {response.text[:300]}"
        case.validate_response(response, checks=CHECKS)


def test_no_server_error_and_every_answer_documented(fuzzed):
    schema, base, headers, front = fuzzed
    started, seen = time.monotonic(), []
    ops = operations(schema)
    described = {(m.upper(), p) for p, item in schema.raw_schema["paths"].items() for m in item}
    fuzzable = described - {("GET", "/openapi.json")}  # (schemathesis leaves the schema's own out)
    assert {(op.method.upper(), op.path) for op in ops} == fuzzable and len(ops) >= 21
    for op in ops:  # every operation, made-up names
        run(op, base, headers, GenerationMode.POSITIVE, 8, seen)
    real = [op for op in ops if op.method.upper() in ("GET", "POST")
            and op.path.endswith(REAL_MODEL_ROUTES) and "{model}" in op.path]
    assert len(real) == 14, [op.path for op in real]
    for op in real:  # a real model: bodies and headers reach validation
        pinned = {"model": "digits"} | ({"version": "1"} if "{version}" in op.path else {})
        modes = [GenerationMode.POSITIVE] + [GenerationMode.NEGATIVE] * (op.method.upper() == "POST")
        for mode in modes:  # (a GET's only generated part is its headers)
            run(op, base, headers, mode, 25, seen, **pinned)
    for op in ops:  # and through HAProxy, whose own refusals must be documented too
        run(op, front, headers, GenerationMode.POSITIVE, 4, seen)
    # the run exercised the API, not only its refusals
    assert seen.count(200) >= 20 and {400, 404} <= set(seen), sorted(set(seen))
    assert time.monotonic() - started < 120
