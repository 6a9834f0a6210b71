"""Triton's classification extension (edge/classification.py): the top-K rendering, its
validation, and both faces' parsing of the class count."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge import classification
from edge.classification import check, render, top_k
from edge.errors import InvalidInput
from edge.grpcface.codec import requested_classes
from edge.grpcface.proto import grpc_service_pb2 as pb
from edge.v2codec import decode_infer_request
from edge.validation import ModelMeta, TensorMeta

FIELD = "outputs[1].parameters.classification"


def meta(*outputs: TensorMeta) -> ModelMeta:
    return ModelMeta("m", "1", ("1",), (TensorMeta("x", np.dtype("<f4"), (-1, 4)),),
                     outputs, max_batch_size=8)


def test_tritons_example_value_formatted_as_std_to_string():
    # docs/protocol/extension_classification.md of triton-inference-server/server
    out = top_k(np.array([[1.1, 3.3, 0.5, 2.4]], dtype=np.float32), 2)
    assert out.tolist() == [["3.300000:1", "2.400000:3"]]
    assert out.dtype == object


def test_ties_keep_the_lower_index_first_and_nan_ranks_last():
    rows = np.array([[0.5, 0.2, 0.5, 0.2], [np.nan, 1.0, -np.inf, 1.0]], dtype=np.float64)
    assert top_k(rows, 4).tolist() == [
        ["0.500000:0", "0.500000:2", "0.200000:1", "0.200000:3"],
        ["1.000000:1", "1.000000:3", "-inf:2", "nan:0"]]
    for dtype in ("u1", "<i4", "<u8"):
        ints = np.array([[3, 1, 3, 1, 0]], dtype=dtype)
        assert top_k(ints, 4).tolist() == [["3:0", "3:2", "1:1", "1:3"]]


def test_k_above_the_number_of_classes_is_clamped():
    out = top_k(np.array([[1, 3], [4, 2]], dtype=np.int32), 5)
    assert out.shape == (2, 2)
    assert out.tolist() == [["3:1", "1:0"], ["4:0", "2:1"]]


@pytest.mark.parametrize(("dtype", "values", "expected"), [
    ("u1", [0, 255, 7], ["255:1", "7:2"]),
    ("<i8", [-5, -1, -9], ["-1:1", "-5:0"]),
    ("<u8", [2**64 - 1, 0, 2**63], ["18446744073709551615:0", "9223372036854775808:2"]),
    ("<f2", [0.5, 0.25, 1.0], ["1.000000:2", "0.500000:0"]),
    ("<f4", [1e-7, 123456.789, -2.5], ["123456.789062:1", "0.000000:0"]),
])
def test_each_numeric_type_compares_and_prints_in_its_own_terms(dtype, values, expected):
    assert top_k(np.array([values], dtype=dtype), 2).tolist() == [expected]


def test_labels_when_present_and_not_empty():
    rows = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    assert top_k(rows, 3, ("cat", "dog", "")).tolist() == [
        ["0.700000:1:dog", "0.200000:2", "0.100000:0:cat"]]
    assert top_k(rows, 3, ("cat",)).tolist() == [["0.700000:1", "0.200000:2", "0.100000:0:cat"]]


def test_same_top_k_as_numpy_argsort_on_random_rows():
    rng = np.random.default_rng(0)
    rows = rng.random((50, 10)).astype(np.float32)
    out = top_k(rows, 3)
    for row, got in zip(rows, out.tolist(), strict=True):
        want = np.argsort(-row, kind="stable")[:3]
        assert [int(s.split(":")[1]) for s in got] == want.tolist()
        assert [s.split(":")[0] for s in got] == [f"{float(row[j]):f}" for j in want]


def test_render_batched_per_row_with_the_outputs_class_labels():
    m = meta(TensorMeta("p", np.dtype("<f4"), (-1, 3), ("setosa", "versicolor", "virginica")),
             TensorMeta("label", np.dtype("<i8"), (-1,), (0, 1, 2)),
             TensorMeta("other", np.dtype("<f4"), (-1, 2)))
    probs = np.array([[0.1, 0.3, 0.6], [0.8, 0.15, 0.05]], dtype=np.float32)
    label = np.array([2, 0], dtype=np.int64)
    other = np.zeros((2, 2), dtype=np.float32)
    served = dict(render(m, [("p", probs), ("label", label), ("other", other)],
                         {"p": 2, "label": 3}))
    assert served["p"].shape == (2, 2)
    assert served["p"].tolist() == [["0.600000:2:virginica", "0.300000:1:versicolor"],
                                    ["0.800000:0:setosa", "0.150000:1:versicolor"]]
    # an integer label is written as it is; a [N] output has one class per row
    assert served["label"].tolist() == [["2:0:0"], ["0:0:0"]]
    assert served["other"] is other  # not asked for: untouched


def test_render_an_output_without_a_batch_dimension_ranks_it_whole():
    m = meta(TensorMeta("fixed", np.dtype("<f4"), (2, 3)))
    arr = np.array([[1, 9, 2], [8, 3, 7]], dtype=np.float32)
    [(name, out)] = render(m, [("fixed", arr)], {"fixed": 4})
    assert out.shape == (4,)  # [K], flattened C order: index 3 is arr[1, 0]
    assert out.tolist() == ["9.000000:1", "8.000000:3", "7.000000:5", "3.000000:4"]
    [(_, out)] = render(m, [("fixed", arr)], {"fixed": 100})
    assert out.shape == (6,)


def test_check_refuses_outputs_that_are_not_numeric_naming_the_field():
    m = meta(TensorMeta("p", np.dtype("<f4"), (-1, 3)), TensorMeta("s", np.dtype(object), (-1,)),
             TensorMeta("b", np.dtype("?"), (-1, 2)))
    check(m, ["s", "p"], {"p": 2})
    for name in ("s", "b"):
        with pytest.raises(InvalidInput) as info:
            check(m, ["p", name], {name: 1})
        assert info.value.field == FIELD and "numeric" in info.value.reason
    with pytest.raises(InvalidInput) as info:
        check(m, ["s", "p"], {"p": 0})
    assert info.value.field == FIELD


def test_a_row_over_tritons_bound_is_refused(monkeypatch):
    monkeypatch.setattr(classification, "MAX_ROW_ELEMENTS", 5)
    m = meta(TensorMeta("p", np.dtype("<f4"), (-1, 6)))
    with pytest.raises(InvalidInput) as info:
        render(m, [("p", np.zeros((1, 6), dtype=np.float32))], {"p": 1})
    assert info.value.field == "outputs[0].parameters.classification"
    # the field is the output's place in the request, other outputs listed first included
    m = meta(TensorMeta("label", np.dtype("<i8"), (-1,)), TensorMeta("p", np.dtype("<f4"), (-1, 6)))
    with pytest.raises(InvalidInput) as info:
        render(m, [("label", np.zeros(1, dtype=np.int64)), ("p", np.zeros((1, 6), np.float32))],
               {"p": 1}, requested=["label", "p"])
    assert info.value.field == "outputs[1].parameters.classification"


def test_rest_request_carries_k_per_output():
    doc = (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], '
           b'"outputs": [{"name": "a"}, {"name": "b", "parameters": {"classification": 3, '
           b'"binary_data": true}}]}')
    parsed = decode_infer_request(doc, None, max_body_elements=100)
    assert parsed.classes == {"b": 3}
    assert parsed.wants_binary("b") and not parsed.wants_binary("a")


def grpc_request(**param: object) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    req.outputs.add(name="a")
    out = req.outputs.add(name="b")
    for kind, value in param.items():
        setattr(out.parameters["classification"], kind, value)
    return req


def test_grpc_request_carries_k_as_int64_param():
    assert requested_classes(grpc_request(int64_param=4)) == {"b": 4}
    assert requested_classes(grpc_request()) == {}
    for bad in ({"int64_param": 0}, {"int64_param": -3}, {"string_param": "4"},
                {"bool_param": True}, {"double_param": 4.0}):
        with pytest.raises(InvalidInput) as info:
            requested_classes(grpc_request(**bad))
        assert info.value.field == FIELD, bad


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<f2", "u1", "<i8", "<u8", "<i2"])
@pytest.mark.parametrize("columns", [5, 40, 1000])
def test_order_is_a_stable_sort_by_value_whatever_the_width(dtype, columns):
    """Narrow rows sort whole, wide ones partition first: both give the order of a plain
    sort by (NaN last, value descending, index), with many ties and NaNs."""
    rng = np.random.default_rng(columns)
    rows = rng.integers(0, 6, size=(7, columns)).astype(dtype)  # few distinct values: ties
    if rows.dtype.kind == "f":
        rows[rng.random(rows.shape) < 0.2] = np.nan
        rows[0] = np.nan  # a row of NaN only
        rows[1, 1:] = np.nan  # one number, then NaN
    for k in (1, 2, 3, columns // 3, columns, columns + 4):
        got = [[int(s.split(":")[1]) for s in row] for row in top_k(rows, k).tolist()]
        want = [sorted(range(columns), key=lambda j, r=row: (
            bool(np.isnan(r[j])) if r.dtype.kind == "f" else False,
            -float(r[j]) if not (r.dtype.kind == "f" and np.isnan(r[j])) else 0.0, j))[:k]
            for row in rows]
        assert got == want, (dtype, columns, k)


def test_the_configs_labels_name_the_probabilities_outputs_columns_only():
    """A model config's ``labels`` (index-aligned with its ``probabilities_output``, the
    digits demo's) label that output as Triton's ``label_filename`` does; an output's own
    ZipMap labels come first; any other output stays unlabelled."""
    outputs = (TensorMeta("probabilities", np.dtype("<f4"), (-1, 3)),
               TensorMeta("logits", np.dtype("<f4"), (-1, 3)),
               TensorMeta("zip", np.dtype("<f4"), (-1, 3), ("a", "b", "c")))
    m = dataclasses.replace(meta(*outputs), labels=("zero", "one", "two"),
                            probabilities_output="probabilities")
    row = np.array([[0.2, 0.5, 0.3]], dtype=np.float32)
    served = dict(render(m, [("probabilities", row), ("logits", row), ("zip", row)],
                         {"probabilities": 1, "logits": 1, "zip": 1}))
    assert served["probabilities"].tolist() == [["0.500000:1:one"]]
    assert served["logits"].tolist() == [["0.500000:1"]]
    assert served["zip"].tolist() == [["0.500000:1:b"]]
