"""Triton's model configuration extension: a version's ``ModelConfig``.

Usage: ``tritonclient.http.InferenceServerClient(url).get_model_config("digits")``
(``GET /v2/models/{model}/config``, or ``/v2/models/{model}/versions/{version}/config``)
and ``tritonclient.grpc``'s ``get_model_config`` (the ``ModelConfig`` RPC,
``edge/grpcface/service.py``) answer what :func:`model_config` builds from the version's
metadata and its per-model config (``<repo>/<model>/config.toml``, daemon/repository.py),
in the shape of the ``ModelConfig`` message of ``edge/grpcface/proto/model_config.proto``,
as Triton fills it for an ONNX model:

- ``name``, ``platform`` ``onnxruntime_onnx``, ``backend`` ``onnxruntime``,
  ``version_policy.specific.versions``: the loaded versions;
- ``max_batch_size``: for a version the daemon batches (dynamic first dimension on every
  input and output, ``[batching]`` on), the most rows one request may carry that the daemon
  also runs as one batch (the smallest of ``batching.max_run_rows``, the model's
  ``max_request_rows`` and the edge's ``edge.max_request_rows``); then ``dims`` omit the
  batch dimension, as in Triton, and ``dynamic_batching.max_queue_delay_microseconds`` is
  the batch's wait. 0 for a version that does not batch; ``dims`` are then the full shape;
- ``input``/``output``: ``name``, ``data_type`` (``TYPE_FP32``, ``TYPE_INT64``,
  ``TYPE_BOOL``, ``TYPE_STRING`` for BYTES...: the metadata's V2 datatype in the proto's
  names) and ``dims`` (-1: dynamic). A tensor with no dimension left (a label output
  ``[N]`` once the batch dimension is dropped) is ``dims: [1]`` with ``reshape: {shape:
  []}``, Triton's way of saying so;
- ``instance_group``: ``KIND_CPU``, ``count`` the runs of the version that happen at once
  (its batches' limit, or the daemon's inference threads);
- ``response_cache.enable``: the model's ``[cache] enabled``;
- ``parameters`` (Triton's are strings): ``class_labels`` (JSON list: a ZipMap output's
  labels, else the config's ``labels``), ``probabilities_output``, ``label_output``,
  ``description`` when the model has them, and ``version``, the version that answered.

Without a version, the version that answers is the one metadata answers for (the traffic
split's choice, else the default version). An unknown model or version is 404 (gRPC
NOT_FOUND); the route needs the ``predict`` scope and a key limited to some models sees
only those, as for model metadata.
"""

from __future__ import annotations

from typing import Any

import falcon
import orjson

from apikeys import PREDICT
from edge import v2codec
from edge.resources import Resource, send_json
from edge.validation import ModelMeta, TensorMeta, batch_limit

BACKENDS = {"onnxruntime_onnx": "onnxruntime"}
MODEL_FILE = "model.onnx"  # every version's file (daemon/repository.py)


def data_type(tensor: TensorMeta) -> str:
    """The tensor's type as model_config.proto's ``DataType`` names it."""
    v2 = v2codec.numpy_to_v2(tensor.dtype)
    return "TYPE_STRING" if v2 == "BYTES" else f"TYPE_{v2}"


def max_batch_size(meta: ModelMeta, max_rows: int) -> int:
    """Triton's ``max_batch_size`` of ``meta`` (see the module docstring); ``max_rows``:
    the edge's own row limit (``edge.max_request_rows``)."""
    tensors = meta.inputs + meta.outputs
    if not meta.batching or not all(t.shape and t.shape[0] < 0 for t in tensors):
        return 0
    return max(0, min(meta.batch_rows, batch_limit(meta, max_rows)))


def _tensor(t: TensorMeta, batched: bool) -> dict[str, Any]:
    dims = list(t.shape[1:] if batched else t.shape)
    body: dict[str, Any] = {"name": t.name, "data_type": data_type(t), "dims": dims or [1]}
    if not dims:
        body["reshape"] = {"shape": []}
    return body


def _parameters(meta: ModelMeta) -> dict[str, dict[str, str]]:
    spec = meta.probabilities_spec()  # its labels are classification's (ModelMeta.column_labels)
    labels = meta.column_labels(spec) if spec is not None else meta.labels
    probabilities = spec.name if spec is not None else meta.probabilities_output
    params = {"version": meta.version, "probabilities_output": probabilities,
              "label_output": meta.label_output, "description": meta.description,
              "class_labels": orjson.dumps(list(labels)).decode() if labels else ""}
    return {k: {"string_value": v} for k, v in sorted(params.items()) if v}


def model_config(meta: ModelMeta, max_rows: int) -> dict[str, Any]:
    """The ``ModelConfig`` of ``meta``'s version as JSON (model_config.proto's field and
    enum names; ``json_format.ParseDict`` takes it as it is)."""
    batch = max_batch_size(meta, max_rows)
    config: dict[str, Any] = {
        "name": meta.name, "platform": meta.platform, "backend": BACKENDS.get(meta.platform, ""),
        "version_policy": {"specific": {"versions": sorted(
            int(v) for v in meta.versions if v.isdigit())}},
        "max_batch_size": batch,
        "input": [_tensor(t, batch > 0) for t in meta.inputs],
        "output": [_tensor(t, batch > 0) for t in meta.outputs],
        "instance_group": [{"name": f"{meta.name}_0", "kind": "KIND_CPU",
                            "count": max(1, meta.instances)}],
        "default_model_filename": MODEL_FILE,
        "response_cache": {"enable": meta.cache_enabled},
        "parameters": _parameters(meta),
    }
    if batch > 0:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": meta.queue_delay_us}
    return config


class ModelConfig(Resource):
    scope = PREDICT

    def on_get(self, req: falcon.Request, resp: falcon.Response, model: str,
               version: str | None = None) -> None:
        meta = self.core.metadata(model, version, self.deadline(req))
        send_json(resp, model_config(meta, self.core.max_rows))


ROUTES: list[tuple[str, type[Resource]]] = [
    ("/v2/models/{model}/config", ModelConfig),
    ("/v2/models/{model}/versions/{version}/config", ModelConfig),
]
