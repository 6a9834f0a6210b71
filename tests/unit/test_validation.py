"""edge.validation against hand-built model metadata.

Every rejection must be InvalidInput (or its subclass PayloadTooLarge) whose
``field`` names the offending part in the client's terms; the tests assert on the
field and on the words of the reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import InvalidInput, PayloadTooLarge
from edge.validation import (
    ModelMeta,
    TensorMeta,
    check_tensors,
    instances_to_array,
    instances_to_inputs,
)

MAX_ROWS = 1024  # the edge's own limit (edge.max_request_rows default)


def model(name: str, *inputs: tuple[str, str, tuple[int, ...]],
          max_batch_size: int = 256) -> ModelMeta:
    return ModelMeta(name=name, version="1", versions=("1",),
                     inputs=tuple(TensorMeta(n, np.dtype(d), s) for n, d, s in inputs),
                     outputs=(TensorMeta("y", np.dtype("float32"), (-1, 1)),),
                     max_batch_size=max_batch_size)


DIGITS = model("digits", ("input", "float32", (-1, 64)))
MULTI = model("multi", ("x", "float32", (-1, 4)), ("k", "int64", (-1, 2)),
              ("mask", "bool", (-1, 4)), max_batch_size=8)


def multi_inputs(rows: int = 3) -> list[tuple[str, np.ndarray]]:
    return [("x", np.zeros((rows, 4), np.float32)),
            ("k", np.ones((rows, 2), np.int64)),
            ("mask", np.zeros((rows, 4), bool))]


def rejected(call, *args) -> InvalidInput:
    """The InvalidInput ``call(*args)`` raises (PayloadTooLarge must be asked for)."""
    with pytest.raises(InvalidInput) as info:
        call(*args)
    assert type(info.value) is InvalidInput, f"{type(info.value).__name__}: {info.value}"
    return info.value


def too_large(call, *args) -> PayloadTooLarge:
    with pytest.raises(PayloadTooLarge) as info:
        call(*args)
    return info.value


# --- check_tensors (V2 face) ---------------------------------------------------------------

def test_valid_inputs_pass_in_any_order() -> None:
    inputs = multi_inputs()
    assert check_tensors(MULTI, inputs, MAX_ROWS) is inputs
    shuffled = inputs[::-1]
    assert check_tensors(MULTI, shuffled, MAX_ROWS) is shuffled
    digits = [("input", np.zeros((256, 64), np.float32))]
    assert check_tensors(DIGITS, digits, MAX_ROWS) is digits


def test_unknown_input_name() -> None:
    inputs = multi_inputs()
    inputs[1] = ("kk", inputs[1][1])
    exc = rejected(check_tensors, MULTI, inputs, MAX_ROWS)
    assert exc.field == "inputs[1].name"
    assert "'kk'" in exc.reason and "'multi'" in exc.reason
    assert "x, k, mask" in exc.reason  # tells the client what the model takes


def test_duplicate_input() -> None:
    inputs = [*multi_inputs(), ("x", np.zeros((3, 4), np.float32))]
    exc = rejected(check_tensors, MULTI, inputs, MAX_ROWS)
    assert exc.field == "inputs[3].name"
    assert "'x' given twice" in exc.reason


def test_missing_input() -> None:
    exc = rejected(check_tensors, MULTI, multi_inputs()[:2], MAX_ROWS)
    assert exc.field == "inputs"
    assert "missing input 'mask'" in exc.reason


def test_no_inputs_at_all() -> None:
    exc = rejected(check_tensors, DIGITS, [], MAX_ROWS)
    assert exc.field == "inputs" and "'input'" in exc.reason


@pytest.mark.parametrize("index, arr, words", [
    (1, np.ones((3, 2), np.int32), ["int32 given", "takes int64"]),
    (0, np.zeros((3, 4), np.float64), ["float64 given", "takes float32"]),
    (2, np.zeros((3, 4), np.uint8), ["uint8 given", "takes bool"]),
])
def test_wrong_dtype(index: int, arr: np.ndarray, words: list[str]) -> None:
    inputs = multi_inputs()
    inputs[index] = (inputs[index][0], arr)
    exc = rejected(check_tensors, MULTI, inputs, MAX_ROWS)
    assert exc.field == f"inputs[{index}].datatype"
    for word in words:
        assert word in exc.reason


@pytest.mark.parametrize("shape", [(3, 4, 1), (12,), ()], ids=str)
def test_wrong_rank(shape: tuple[int, ...]) -> None:
    inputs = multi_inputs()
    inputs[0] = ("x", np.zeros(shape, np.float32))
    exc = rejected(check_tensors, MULTI, inputs, MAX_ROWS)
    assert exc.field == "inputs[0].shape"
    assert f"rank {len(shape)}" in exc.reason and "[N, 4]" in exc.reason


def test_wrong_fixed_dimension() -> None:
    inputs = multi_inputs()
    inputs[2] = ("mask", np.zeros((3, 5), bool))
    exc = rejected(check_tensors, MULTI, inputs, MAX_ROWS)
    assert exc.field == "inputs[2].shape"
    assert "dimension 1 is 5" in exc.reason and "[N, 4]" in exc.reason


@pytest.mark.parametrize("max_rows, limit", [(MAX_ROWS, 256), (100, 100)])
def test_batch_over_the_limit_is_payload_too_large(max_rows: int, limit: int) -> None:
    ok = [("input", np.zeros((limit, 64), np.float32))]
    assert check_tensors(DIGITS, ok, max_rows) is ok
    exc = too_large(check_tensors, DIGITS, [("input", np.zeros((limit + 1, 64), np.float32))],
                    max_rows)
    assert exc.field == "inputs[0].shape"
    assert f"{limit + 1} rows" in exc.reason and f"limit of {limit}" in exc.reason


def test_zero_rows_is_invalid_not_too_large() -> None:
    exc = rejected(check_tensors, DIGITS, [("input", np.zeros((0, 64), np.float32))], MAX_ROWS)
    assert exc.field == "inputs[0].shape"
    assert "0 rows" in exc.reason


def test_inconsistent_batch_across_inputs() -> None:
    inputs = multi_inputs(3)
    inputs[1] = ("k", np.ones((2, 2), np.int64))
    exc = rejected(check_tensors, MULTI, inputs, MAX_ROWS)
    assert exc.field == "inputs[1].shape"
    assert "2 rows" in exc.reason and "3" in exc.reason


def test_fixed_batch_dimension_is_not_a_batch() -> None:
    fixed = model("fixed", ("a", "float32", (1, 4)), ("b", "float32", (-1, 4)), max_batch_size=2)
    inputs = [("a", np.zeros((1, 4), np.float32)), ("b", np.zeros((2, 4), np.float32))]
    assert check_tensors(fixed, inputs, MAX_ROWS) is inputs


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_non_finite_value_is_named_with_its_index(value: float, dtype: str) -> None:
    meta = model("m", ("k", "int64", (-1, 2)), ("x", dtype, (-1, 4)))
    x = np.zeros((3, 4), dtype)
    x[1, 2] = value
    inputs = [("k", np.ones((3, 2), np.int64)), ("x", x)]
    exc = rejected(check_tensors, meta, inputs, MAX_ROWS)
    assert exc.field == "inputs[1].data"
    assert "non-finite" in exc.reason and "index [1, 2]" in exc.reason


def test_first_non_finite_value_is_reported() -> None:
    x = np.zeros((2, 64), np.float32)
    x[1, 63], x[0, 5] = np.nan, np.inf
    exc = rejected(check_tensors, DIGITS, [("input", x)], MAX_ROWS)
    assert "index [0, 5]" in exc.reason


# --- instances_to_array (simple face) -------------------------------------------------------

def rows(n: int, width: int = 64, value: object = 0.5) -> list[list[object]]:
    return [[value] * width for _ in range(n)]


def test_instances_become_the_single_input() -> None:
    instances = rows(3)
    instances[2][7] = 3  # JSON integers are fine for a float model
    name, arr = instances_to_array(DIGITS, instances, MAX_ROWS)
    assert name == "input"
    assert arr.dtype == np.float32 and arr.shape == (3, 64)
    assert arr[2, 7] == 3.0 and arr[0, 0] == 0.5


@pytest.mark.parametrize("instances", [{"a": 1}, "[[1, 2]]", None, 3], ids=repr)
def test_instances_not_a_list(instances: object) -> None:
    exc = rejected(instances_to_array, DIGITS, instances, MAX_ROWS)
    assert exc.field == "instances" and "list of rows" in exc.reason


def test_no_instances() -> None:
    exc = rejected(instances_to_array, DIGITS, [], MAX_ROWS)
    assert exc.field == "instances" and "no rows" in exc.reason


@pytest.mark.parametrize("max_rows, limit", [(MAX_ROWS, 256), (4, 4)])
def test_too_many_instances(max_rows: int, limit: int) -> None:
    assert instances_to_array(DIGITS, rows(limit), max_rows)[1].shape == (limit, 64)
    exc = too_large(instances_to_array, DIGITS, rows(limit + 1), max_rows)
    assert exc.field == "instances"
    assert f"{limit + 1} rows" in exc.reason and f"limit of {limit}" in exc.reason


@pytest.mark.parametrize("length", [63, 65, 0])
def test_row_of_wrong_length(length: int) -> None:
    instances = rows(5)
    instances[3] = [0.0] * length
    exc = rejected(instances_to_array, DIGITS, instances, MAX_ROWS)
    assert exc.field == "instances[3]"
    assert f"{length} values" in exc.reason and "takes 64" in exc.reason


@pytest.mark.parametrize("row", [1.0, "0.5", None])
def test_row_that_is_not_a_list(row: object) -> None:
    instances = rows(2)
    instances[1] = row
    exc = rejected(instances_to_array, DIGITS, instances, MAX_ROWS)
    assert exc.field == "instances[1]" and "list of 64 values" in exc.reason


def test_object_row_of_a_one_input_model_is_keyed_by_its_name() -> None:
    instances = rows(2)
    instances[1] = {"a": 1}
    exc = rejected(instances_to_array, DIGITS, instances, MAX_ROWS)
    assert exc.field == "instances[1].a" and "no such input (inputs: input)" in exc.reason
    instances[1] = {"input": [0.5] * 64}
    assert instances_to_array(DIGITS, instances, MAX_ROWS)[1][1].tolist() == [0.5] * 64


@pytest.mark.parametrize("element, kind", [
    ("1.5", "a string"), (True, "a boolean"), (False, "a boolean"), (None, "null"),
    ([1.0], "a list"), ({"v": 1}, "an object"),
])
def test_element_of_the_wrong_json_type(element: object, kind: str) -> None:
    instances = rows(3)
    instances[2][17] = element
    exc = rejected(instances_to_array, DIGITS, instances, MAX_ROWS)
    assert exc.field == "instances[2][17]"
    assert exc.reason == f"{kind} given, the model takes float32 numbers"


def test_ragged_rows_of_a_dynamic_width_model() -> None:
    meta = model("dyn", ("v", "float32", (-1, -1)))
    assert instances_to_array(meta, [[1, 2], [3, 4]], MAX_ROWS)[1].shape == (2, 2)
    exc = rejected(instances_to_array, meta, [[1.0, 2.0], [3.0]], MAX_ROWS)
    assert exc.field == "instances" and "different lengths" in exc.reason


def test_scalar_rows_are_type_checked() -> None:
    meta = model("scalar", ("v", "float32", (-1,)))
    assert instances_to_array(meta, [1.0, 2, 3.5], MAX_ROWS)[1].tolist() == [1.0, 2.0, 3.5]
    exc = rejected(instances_to_array, meta, [1.0, [2.0]], MAX_ROWS)
    assert exc.field == "instances[1]" and "a list given" in exc.reason


def test_nested_rows_name_the_full_path() -> None:
    meta = model("img", ("v", "float32", (-1, 2, 3)))
    instances = [[[0.0] * 3, [0.0] * 3], [[0.0] * 3, [0.0, "x", 0.0]]]
    exc = rejected(instances_to_array, meta, instances, MAX_ROWS)
    assert exc.field == "instances[1][1][1]"
    instances[1][1] = [0.0, 0.0]
    assert rejected(instances_to_array, meta, instances, MAX_ROWS).field == "instances[1][1]"


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("dtype, huge", [("float32", 1e39), ("float32", -1e39),
                                         ("float32", 10**39), ("float16", 70000.0)])
def test_value_that_overflows_the_model_float_type(dtype: str, huge: float) -> None:
    meta = model("m", ("v", dtype, (-1, 4)))
    instances = [[0.0] * 4 for _ in range(3)]
    instances[2][1] = huge  # finite in JSON (a double), infinite once cast
    exc = rejected(instances_to_array, meta, instances, MAX_ROWS)
    assert exc.field == "instances"
    assert "non-finite" in exc.reason and "index [2, 1]" in exc.reason


def test_largest_float32_is_accepted() -> None:
    meta = model("m", ("v", "float32", (-1, 1)))
    top = float(np.finfo(np.float32).max)
    assert instances_to_array(meta, [[top], [-top]], MAX_ROWS)[1].tolist() == [[top], [-top]]


@pytest.mark.parametrize("dtype, bad, ok", [
    ("int32", 2**31, 2**31 - 1), ("int32", -(2**31) - 1, -(2**31)),
    ("int64", 2**63, 2**63 - 1), ("int64", 2**64 - 1, -(2**63)),
    ("uint8", 256, 255), ("uint8", -1, 0), ("uint64", -1, 2**64 - 1),
])
def test_integer_model_out_of_range(dtype: str, bad: int, ok: int) -> None:
    meta = model("ints", ("ids", dtype, (-1, 3)))
    _, arr = instances_to_array(meta, [[0, ok, 0]], MAX_ROWS)
    assert arr.dtype == np.dtype(dtype) and int(arr[0, 1]) == ok
    exc = rejected(instances_to_array, meta, [[0, 0, 0], [0, bad, 0]], MAX_ROWS)
    assert exc.field == "instances[1][1]"
    assert exc.reason == f"{bad} is out of range for {dtype}"


@pytest.mark.parametrize("element, kind", [(1.0, "a float"), (True, "a boolean"),
                                           ("7", "a string")])
def test_integer_model_takes_only_integers(element: object, kind: str) -> None:
    meta = model("ints", ("ids", "int64", (-1, 3)))
    exc = rejected(instances_to_array, meta, [[0, element, 0]], MAX_ROWS)
    assert exc.field == "instances[0][1]"
    assert exc.reason == f"{kind} given, the model takes int64 numbers"


def test_bool_model_takes_only_booleans() -> None:
    meta = model("flags", ("f", "bool", (-1, 2)))
    assert instances_to_array(meta, [[True, False]], MAX_ROWS)[1].tolist() == [[True, False]]
    exc = rejected(instances_to_array, meta, [[True, 1]], MAX_ROWS)
    assert exc.field == "instances[0][1]" and "an integer given" in exc.reason


def test_multi_input_model_needs_rows_keyed_by_input_name() -> None:
    exc = rejected(instances_to_inputs, MULTI, rows(1, 4), MAX_ROWS)
    assert exc.field == "instances[0]"
    assert "3 inputs (x, k, mask)" in exc.reason and "keyed by input name" in exc.reason
    exc = rejected(instances_to_array, MULTI, rows(1, 4), MAX_ROWS)
    assert exc.field == "instances" and "3 inputs" in exc.reason


# --- instances_to_inputs: named inputs and strings -------------------------------------------

TABULAR = model("tabular", ("color", "object", (-1, 1)), ("x1", "float32", (-1, 1)),
                ("x2", "float32", (-1, 1)))
TEXT = model("text", ("text", "object", (-1, 1)))


def test_rows_keyed_by_input_name_become_one_tensor_per_input_in_model_order() -> None:
    instances = [{"x2": -1.2, "color": "red", "x1": 0.3}, {"color": ["caf\u00e9"], "x1": [1],
                                                          "x2": 2.5}]
    got = instances_to_inputs(TABULAR, instances, MAX_ROWS)
    assert [n for n, _ in got] == ["color", "x1", "x2"]
    color, x1, x2 = (a for _, a in got)
    assert color.dtype == object and color.tolist() == [["red"], ["caf\u00e9"]]
    assert x1.dtype == np.float32 and x1.tolist() == [[0.30000001192092896], [1.0]]
    assert x2.shape == (2, 1)
    multi = [{"x": [0.0] * 4, "k": [1, 2], "mask": [True, False, True, True]}]
    assert [a.shape for _, a in instances_to_inputs(MULTI, multi, MAX_ROWS)] == [(1, 4), (1, 2),
                                                                                 (1, 4)]


@pytest.mark.parametrize(("instances", "field", "words"), [
    ([{"color": 3, "x1": 0.3, "x2": 1.0}], "instances[0].color", ["an integer given", "strings"]),
    ([{"color": "red", "x1": "0.3", "x2": 1.0}], "instances[0].x1", ["a string given",
                                                                      "float32 numbers"]),
    ([{"color": "red", "x1": 0.3}], "instances[0].x2", ["missing"]),
    ([{"color": "red", "x1": 0.3, "x2": 1.0, "x3": 2}], "instances[0].x3", ["no such input"]),
    ([{"color": "red", "x1": 0.3, "x2": 1.0}, {"color": "red", "x1": [0.3, 1], "x2": 1.0}],
     "instances[1].x1", ["2 values", "takes 1"]),
    ([{"color": "red", "x1": 0.3, "x2": 1.0}, ["red", 0.3, 1.0]], "instances[1]",
     ["keyed by input name"]),
], ids=["number-in-string", "string-in-number", "missing", "unknown", "too-many", "list-row"])
def test_named_input_errors_name_the_input(instances, field, words) -> None:
    exc = rejected(instances_to_inputs, TABULAR, instances, MAX_ROWS)
    assert exc.field == field, exc
    for word in words:
        assert word in exc.reason, exc.reason


def test_string_model_takes_plain_rows_and_bare_strings() -> None:
    [(name, arr)] = instances_to_inputs(TEXT, [["a b"], "c", [""]], MAX_ROWS)
    assert name == "text" and arr.dtype == object and arr.tolist() == [["a b"], ["c"], [""]]
    assert instances_to_inputs(TEXT, [{"text": "x"}], MAX_ROWS)[0][1].tolist() == [["x"]]
    exc = rejected(instances_to_inputs, TEXT, [["a"], [1.5]], MAX_ROWS)
    assert exc.field == "instances[1][0]" and "a float given" in exc.reason


def test_ragged_string_rows_are_refused() -> None:
    ragged = model("ragged", ("t", "object", (-1, -1)))
    assert instances_to_inputs(ragged, [["a", "b"], ["c", "d"]], MAX_ROWS)[0][1].shape == (2, 2)
    exc = rejected(instances_to_inputs, ragged, [["a", "b"], ["c"]], MAX_ROWS)
    assert exc.field == "instances" and "different lengths" in exc.reason


def test_v2_string_tensor_in_a_numeric_input_names_the_datatype() -> None:
    exc = rejected(check_tensors, TABULAR, [("color", np.array([["a"]], dtype=object)),
                                            ("x1", np.array([["b"]], dtype=object)),
                                            ("x2", np.zeros((1, 1), np.float32))], MAX_ROWS)
    assert exc.field == "inputs[1].datatype"
    assert exc.reason == "string given, input 'x1' takes float32"


def test_fixed_first_dimension_takes_exactly_that_many_instances() -> None:
    fixed = model("fixed", ("a", "float32", (2, 4)))
    assert instances_to_array(fixed, rows(2, 4), MAX_ROWS)[1].shape == (2, 4)
    exc = rejected(instances_to_array, fixed, rows(3, 4), MAX_ROWS)
    assert exc.field == "instances" and "exactly 2" in exc.reason
