"""edge.core.classify (the /v1 answer) and the V2 model metadata of ZipMap models."""

from __future__ import annotations

import numpy as np

from edge.core import InferResult, classify
from edge.resources import model_metadata_body
from edge.validation import ModelMeta, TensorMeta
from wire import ops


def meta(*outputs: TensorMeta, labels: tuple[str, ...] = (), label_output: str = "",
         probabilities_output: str = "") -> ModelMeta:
    return ModelMeta(name="m", version="1", versions=("1",),
                     inputs=(TensorMeta("X", np.dtype("float32"), (-1, 4)),), outputs=outputs,
                     max_batch_size=8, labels=labels, label_output=label_output,
                     probabilities_output=probabilities_output)


PROBS = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32)
NAMES = ("setosa", "versicolor", "virginica")
STRING_LABEL = TensorMeta("output_label", np.dtype(object), (-1,))
ZIPMAP_NAMES = TensorMeta("output_probability", np.dtype("float32"), (-1, 3), NAMES)


def result(**outputs: np.ndarray) -> InferResult:
    return InferResult("m", "1", list(outputs.items()))


def test_zipmap_with_string_labels_keys_probabilities_and_keeps_the_string_label() -> None:
    rows = classify(meta(STRING_LABEL, ZIPMAP_NAMES), result(
        output_label=np.array(["versicolor", "setosa"], dtype=object), output_probability=PROBS))
    assert rows[0]["label"] == "versicolor" and rows[1]["label"] == "setosa"
    assert list(rows[0]["probabilities"]) == list(NAMES)
    assert rows[0]["probabilities"]["versicolor"] == float(np.float32(0.7))


def test_zipmap_with_int_labels_answers_int_labels_and_string_keys() -> None:
    m = meta(TensorMeta("output_label", np.dtype("int64"), (-1,)),
             TensorMeta("output_probability", np.dtype("float32"), (-1, 3), (0, 1, 2)))
    rows = classify(m, result(output_label=np.array([1, 0]), output_probability=PROBS))
    assert [r["label"] for r in rows] == [1, 0]
    assert all(type(r["label"]) is int for r in rows)
    assert list(rows[1]["probabilities"]) == ["0", "1", "2"]


def test_zipmap_without_a_label_output_takes_the_class_of_the_highest_probability() -> None:
    rows = classify(meta(ZIPMAP_NAMES), result(output_probability=PROBS))
    assert [r["label"] for r in rows] == ["versicolor", "setosa"]
    m = meta(TensorMeta("p", np.dtype("float32"), (-1, 3), (10, 20, 30)))
    assert [r["label"] for r in classify(m, result(p=PROBS))] == [20, 10]


def test_configured_outputs_and_labels_still_win() -> None:
    m = meta(TensorMeta("label", np.dtype("int64"), (-1,)),
             TensorMeta("probabilities", np.dtype("float32"), (-1, 3)),
             labels=("a", "b", "c"), label_output="label", probabilities_output="probabilities")
    rows = classify(m, result(label=np.array([2, 2]), probabilities=PROBS))
    assert [r["label"] for r in rows] == [2, 2] and list(rows[0]["probabilities"]) == ["a", "b",
                                                                                       "c"]


def test_a_regressor_answers_its_output_rows() -> None:
    m = meta(TensorMeta("variable", np.dtype("float32"), (-1, 1)))
    assert classify(m, result(variable=np.array([[1.5], [2.0]], np.float32))) == [
        {"output": [1.5]}, {"output": [2.0]}]


def test_v2_metadata_says_the_class_labels_and_bytes_datatype() -> None:
    body = model_metadata_body(meta(STRING_LABEL, ZIPMAP_NAMES))
    assert body["outputs"] == [
        {"name": "output_label", "datatype": "BYTES", "shape": [-1]},
        {"name": "output_probability", "datatype": "FP32", "shape": [-1, 3],
         "parameters": {"class_labels": list(NAMES)}}]
    assert body["parameters"] == {"class_labels": list(NAMES),
                                  "probabilities_output": "output_probability"}
    assert "parameters" not in model_metadata_body(meta(STRING_LABEL))


def test_model_meta_reads_class_labels_from_the_daemon_metadata() -> None:
    wire = {"name": "m", "version": "1", "inputs": [{"name": "X", "dtype": "|O", "shape": [-1, 1]}],
            "outputs": [{"name": "p", "dtype": "<f4", "shape": [-1, 2], "class_labels": [3, 7]}]}
    m = ModelMeta.from_answer(ops.MetadataAnswer.from_wire(wire), ("1",))
    assert m.inputs[0].dtype == np.dtype(object)
    assert m.outputs[0].class_labels == (3, 7)


def test_openapi_describes_bytes_named_rows_and_class_labels() -> None:
    from edge.openapi import spec
    schemas = spec()["components"]["schemas"]
    assert "BYTES" in schemas["Tensor"]["properties"]["datatype"]["enum"]
    rows = schemas["PredictRequest"]["properties"]["instances"]["items"]["oneOf"]
    keyed = next(r for r in rows if r.get("type") == "object")
    assert "keyed by input name" in keyed["description"]
    assert any(r.get("type") == "array" for r in rows)
    label = schemas["PredictResponse"]["properties"]["predictions"]["items"]["properties"]["label"]
    assert {"type": "string"} in label["oneOf"] and {"type": "integer"} in label["oneOf"]
    assert "class_labels" in schemas["ClassLabels"]["properties"]
