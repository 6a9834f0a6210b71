"""edge/modelconfig.py: a version's Triton ``ModelConfig`` from the daemon's metadata answer
(the wire's ``ops.MetadataAnswer``, as the daemon sends it), checked against the vendored
model_config.proto (every field and enum name must parse strictly) and Triton's rules:
``max_batch_size`` 0 unless the version batches, ``dims`` without the batch dimension
when it does. The stock clients against a real stack: tests/integration/test_modelconfig.py."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from edge import v2codec
from edge.grpcface.proto import grpc_service_pb2 as pb
from edge.grpcface.proto import model_config_pb2 as mc
from edge.modelconfig import data_type, max_batch_size, model_config
from edge.validation import ModelMeta, TensorMeta
from wire import ops

BATCHED = {"enabled": True, "max_batch_size": 32, "max_queue_delay_us": 500, "max_running": 1,
           "instances": 1}


def meta(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], *,
         config: dict[str, Any] | None = None, batching: dict[str, Any] | None = None,
         versions: tuple[str, ...] = ("1", "3")) -> ModelMeta:
    answer = ops.MetadataAnswer(name="m", version=versions[-1], inputs=inputs, outputs=outputs,
                                config={"max_batch_size": 64, **(config or {})},
                                batching=BATCHED if batching is None else batching)
    return ModelMeta.from_answer(answer, versions)


def parsed(config: dict[str, Any]) -> Any:
    """The config as the gRPC face sends it (strict: an unknown field or enum name raises)."""
    return json_format.ParseDict({"config": config}, pb.ModelConfigResponse()).config


DIGITS = meta([{"name": "input", "dtype": "<f4", "shape": [-1, 64]}],
              [{"name": "label", "dtype": "<i8", "shape": [-1]},
               {"name": "probabilities", "dtype": "<f4", "shape": [-1, 10]}])


def test_a_batching_version_drops_the_batch_dimension_and_says_its_queue_delay():
    cfg = model_config(DIGITS, max_rows=1024)
    assert cfg["name"] == "m" and cfg["platform"] == "onnxruntime_onnx"
    assert cfg["backend"] == "onnxruntime"
    assert cfg["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert cfg["max_batch_size"] == 32  # the run's rows, under the request's 64
    assert cfg["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
    assert cfg["output"] == [
        {"name": "label", "data_type": "TYPE_INT64", "dims": [1], "reshape": {"shape": []}},
        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]
    assert cfg["dynamic_batching"] == {"max_queue_delay_microseconds": 500}
    assert cfg["instance_group"] == [{"name": "m_0", "kind": "KIND_CPU", "count": 1}]
    assert cfg["parameters"] == {"version": {"string_value": "3"}}
    proto = parsed(cfg)
    assert proto.max_batch_size == 32 and list(proto.input[0].dims) == [64]
    assert proto.output[0].HasField("reshape") and list(proto.output[0].reshape.shape) == []
    assert proto.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert proto.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(proto.version_policy.specific.versions) == [1, 3]


def test_max_batch_size_is_what_a_request_may_carry_and_runs_as_one_batch():
    assert max_batch_size(DIGITS, max_rows=1024) == 32  # batching.max_run_rows
    assert max_batch_size(DIGITS, max_rows=16) == 16  # edge.max_request_rows
    small = meta([{"name": "x", "dtype": "<f4", "shape": [-1, 2]}],
                 [{"name": "y", "dtype": "<f4", "shape": [-1]}], config={"max_batch_size": 8})
    assert max_batch_size(small, max_rows=1024) == 8  # the model's max_request_rows


@pytest.mark.parametrize("batching", [
    {"enabled": False, "max_batch_size": 32, "max_queue_delay_us": 0, "instances": 2,
     "reason": "disabled in config.toml"},
    {},  # a daemon that does not say: not batching
])
def test_a_version_that_does_not_batch_has_max_batch_size_0_and_full_dims(batching):
    m = meta([{"name": "input", "dtype": "<f4", "shape": [-1, 64]}],
             [{"name": "label", "dtype": "<i8", "shape": [-1]}], batching=batching)
    cfg = model_config(m, max_rows=1024)
    assert cfg["max_batch_size"] == 0 and "dynamic_batching" not in cfg
    assert cfg["input"][0]["dims"] == [-1, 64] and cfg["output"][0]["dims"] == [-1]
    assert cfg["instance_group"][0]["count"] == batching.get("instances", 1)
    assert parsed(cfg).WhichOneof("scheduling_choice") is None


def test_a_fixed_first_dimension_never_batches_even_if_the_daemon_said_so():
    m = meta([{"name": "x", "dtype": "<f4", "shape": [1, 3]}],
             [{"name": "y", "dtype": "<f4", "shape": [1]}])
    cfg = model_config(m, max_rows=1024)
    assert cfg["max_batch_size"] == 0 and cfg["input"][0]["dims"] == [1, 3]


def test_zipmap_labels_string_tensors_and_config_become_parameters():
    m = meta([{"name": "text", "dtype": "|O", "shape": [-1, 1]}],
             [{"name": "output_label", "dtype": "|O", "shape": [-1]},
              {"name": "output_probability", "dtype": "<f4", "shape": [-1, 3],
               "class_labels": ["a", "b", "c"]}],
             config={"description": "topics", "labels": ["x", "y", "z"]})
    cfg = model_config(m, max_rows=1024)
    assert cfg["input"][0] == {"name": "text", "data_type": "TYPE_STRING", "dims": [1]}
    assert cfg["output"][0]["data_type"] == "TYPE_STRING"
    assert cfg["parameters"] == {  # the ZipMap's own labels win over the config's
        "class_labels": {"string_value": '["a","b","c"]'},
        "probabilities_output": {"string_value": "output_probability"},
        "description": {"string_value": "topics"}, "version": {"string_value": "3"}}
    assert parsed(cfg).parameters["class_labels"].string_value == '["a","b","c"]'
    ints = meta([{"name": "X", "dtype": "<f4", "shape": [-1, 4]}],
                [{"name": "p", "dtype": "<f4", "shape": [-1, 3], "class_labels": [0, 1, 2]}])
    assert model_config(ints, 1024)["parameters"]["class_labels"] == {"string_value": "[0,1,2]"}


def test_config_labels_and_response_cache():
    m = meta([{"name": "x", "dtype": "<f4", "shape": [-1, 2]}],
             [{"name": "scores", "dtype": "<f4", "shape": [-1, 2]}],
             config={"labels": ["no", "yes"], "probabilities_output": "scores",
                     "label_output": "", "cache": {"enabled": True, "ttl_s": 5}})
    cfg = model_config(m, max_rows=1024)
    assert cfg["parameters"]["class_labels"] == {"string_value": '["no","yes"]'}
    assert cfg["parameters"]["probabilities_output"] == {"string_value": "scores"}
    assert "label_output" not in cfg["parameters"]
    assert cfg["response_cache"] == {"enable": True}
    assert parsed(cfg).response_cache.enable is True


SERVED = {**v2codec.V2_TO_NUMPY, "BYTES": v2codec.BYTES}


@pytest.mark.parametrize("v2", sorted(SERVED))
def test_every_v2_datatype_has_its_model_config_name(v2):
    name = data_type(TensorMeta("t", SERVED[v2], (-1,)))
    assert name in mc.DataType.keys()
    assert name == ("TYPE_STRING" if v2 == "BYTES" else f"TYPE_{v2}")


def test_config_and_classification_agree_on_the_probabilities_outputs_labels():
    """A model with a ZipMap output whose config names another output as its
    probabilities: /config's class_labels are the labels classification writes for that
    output (ModelMeta.column_labels), not the ZipMap's."""
    import numpy as np

    from edge.classification import render

    m = meta([{"name": "x", "dtype": "<f4", "shape": [-1, 2]}],
             [{"name": "zip", "dtype": "<f4", "shape": [-1, 2], "class_labels": ["a", "b"]},
              {"name": "scores", "dtype": "<f4", "shape": [-1, 2]}],
             config={"labels": ["no", "yes"], "probabilities_output": "scores"})
    params = model_config(m, max_rows=1024)["parameters"]
    assert params["probabilities_output"] == {"string_value": "scores"}
    assert params["class_labels"] == {"string_value": '["no","yes"]'}
    row = np.array([[0.25, 0.75]], dtype=np.float32)
    served = dict(render(m, [("zip", row), ("scores", row)], {"zip": 1, "scores": 1}))
    assert served["scores"].tolist() == [["0.750000:1:yes"]]
    assert served["zip"].tolist() == [["0.750000:1:b"]]
