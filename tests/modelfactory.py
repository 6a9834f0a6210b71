"""Synthetic ONNX models for tests and benchmarks, written into a model repository.

Each writer lays out ``<repo>/<name>/<version>/model.onnx`` plus ``<repo>/<name>/config.toml``
(the per-model configuration the daemon reads) and returns the ``model.onnx`` path. Only
numpy and onnx are needed; nothing here imports the product packages.

- :func:`write_mlp_model`: a float32 ReLU MLP classifier of any size, deterministic from a
  seed (``bench/gen_heavy_model.py`` uses it for the ~245 MB benchmark model).
- :func:`write_multi_io_model`: three inputs of three dtypes and two outputs, for wire and
  batching tests; its docstring states the formula so tests can compute the expected output.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # readable by any onnxruntime >= 1.14
PRODUCER = "falcon tests/modelfactory.py"


def model_paths(repo: Path, name: str, version: str) -> tuple[Path, Path]:
    """``(model.onnx path, config.toml path)`` for one model version, directories created."""
    model_dir = Path(repo) / name
    (model_dir / version).mkdir(parents=True, exist_ok=True)
    return model_dir / version / "model.onnx", model_dir / "config.toml"


def write_config(
    path: Path,
    *,
    description: str,
    max_batch_size: int,
    prepack: bool = False,
    labels: list[str] | None = None,
) -> None:
    """Write a per-model ``config.toml`` (the same keys as ``models/digits/config.toml``)."""
    lines = [
        "# Per-model configuration. Read by the inference daemon at load time.",
        f"description = {json.dumps(description)}",
        f"max_request_rows = {max_batch_size}",
        f"prepack = {'true' if prepack else 'false'}",
    ]
    if labels is not None:
        lines += [
            f"labels = [{', '.join(json.dumps(label) for label in labels)}]",
            'label_output = "label"',
            'probabilities_output = "probabilities"',
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    return model


# ----------------------------------------------------------------------------- MLP


def _mlp_layers(
    input_dim: int, hidden: int, layers: int, classes: int, seed: int
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(prefix, weight [fan_in, fan_out], bias [fan_out])`` one layer at a time.

    Weights are ``normal / sqrt(fan_in)`` and biases ``normal * 0.01``, float32, drawn in
    layer order from one ``default_rng(seed)``, so the model is a pure function of its
    arguments and only one layer is in memory at a time.
    """
    rng = np.random.default_rng(seed)
    dims = [input_dim] + [hidden] * layers + [classes]
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        weight = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
        weight *= np.float32(1.0 / np.sqrt(fan_in))
        bias = rng.standard_normal(fan_out, dtype=np.float32)
        bias *= np.float32(0.01)
        yield ("out" if i == layers else f"fc{i}"), weight, bias


def _mlp_graph(input_dim: int, layers: int, classes: int) -> onnx.GraphProto:
    """The MLP's nodes and signature, without initializers (they are streamed separately)."""
    nodes, h = [], "input"
    for i in range(layers + 1):
        prefix = "out" if i == layers else f"fc{i}"
        nodes.append(helper.make_node("MatMul", [h, f"{prefix}.weight"], [f"{prefix}.mm"]))
        out = "logits" if i == layers else f"{prefix}.pre"
        nodes.append(helper.make_node("Add", [f"{prefix}.mm", f"{prefix}.bias"], [out]))
        if i < layers:
            nodes.append(helper.make_node("Relu", [out], [f"{prefix}.act"]))
            h = f"{prefix}.act"
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    nodes.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0))
    return helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", input_dim])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
        ],
    )


def _initializer_chunk(arr: np.ndarray, name: str) -> bytes:
    """A serialized ModelProto holding only ``graph.initializer = [arr]``.

    NOTE: protobuf parsers merge repeated occurrences of an embedded message field and
    append repeated fields, so ``shell + chunk + chunk ...`` parses as one model whose graph
    has all the initializers in order. This keeps generation at about one layer of memory
    instead of the whole model twice (proto + serialized copy).
    """
    chunk = onnx.ModelProto()
    chunk.graph.initializer.append(numpy_helper.from_array(arr, name))
    data: bytes = chunk.SerializeToString()
    return data


def write_mlp_model(
    repo: Path,
    name: str,
    *,
    input_dim: int,
    hidden: int,
    layers: int,
    classes: int,
    seed: int,
    version: str = "1",
    max_batch_size: int = 256,
) -> Path:
    """Write a float32 MLP classifier and its config; return the ``model.onnx`` path.

    ``input`` float32 [N, input_dim] -> ``layers`` x (MatMul, Add, Relu) of width ``hidden``
    -> MatMul, Add (``logits``) -> ``probabilities`` = Softmax float32 [N, classes] and
    ``label`` = ArgMax int64 [N]. Weight bytes: 4 * (input_dim*hidden +
    (layers-1)*hidden^2 + hidden*classes + layers*hidden + classes). Deterministic from
    ``seed`` (see :func:`_mlp_layers`); peak memory is about one layer.
    """
    model_path, config_path = model_paths(repo, name, version)
    doc = f"MLP {input_dim}->{layers}x{hidden}->{classes}, seed {seed}"
    shell = _model(_mlp_graph(input_dim, layers, classes), doc)
    with open(model_path, "wb") as f:
        f.write(shell.SerializeToString())
        for prefix, weight, bias in _mlp_layers(input_dim, hidden, layers, classes, seed):
            f.write(_initializer_chunk(weight, f"{prefix}.weight"))
            f.write(_initializer_chunk(bias, f"{prefix}.bias"))
    write_config(
        config_path,
        description=f"Synthetic benchmark classifier: {doc}.",
        max_batch_size=max_batch_size,
        labels=[str(i) for i in range(classes)],
    )
    return model_path


# ------------------------------------------------------------------------- multi-io

MULTI_SCALE = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)


def multi_io_expected(
    x: np.ndarray, k: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference for :func:`write_multi_io_model`: returns ``(y, n)``."""
    offset = k.sum(axis=1, keepdims=True).astype(np.float32)
    y = np.where(mask, x * MULTI_SCALE + offset, np.float32(0)).astype(np.float32)
    return y, mask.sum(axis=1).astype(np.int64)


def _multi_io_graph() -> onnx.GraphProto:
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("ReduceSum", ["k", "axes"], ["ksum"], keepdims=1),
        helper.make_node("Cast", ["ksum"], ["ksum_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["scaled", "ksum_f"], ["shifted"]),
        helper.make_node("Where", ["mask", "shifted", "zero"], ["y"]),
        helper.make_node("Cast", ["mask"], ["mask_i"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["mask_i", "axes"], ["n"], keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(MULTI_SCALE, "scale"),
        numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("k", TensorProto.INT64, ["N", 2]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 4]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("n", TensorProto.INT64, ["N"]),
    ]
    return helper.make_graph(nodes, "multi_io", inputs, outputs, initializer=inits)


def write_multi_io_model(repo: Path, name: str = "multi", version: str = "1") -> Path:
    """Write a three-input, two-output model and its config; return the ``model.onnx`` path.

    Inputs (batch dimension ``N`` dynamic):
      ``x`` float32 [N, 4], ``k`` int64 [N, 2], ``mask`` bool [N, 4].
    Outputs:
      ``y`` float32 [N, 4] = ``where(mask, x * [1, 2, 3, 4] + float32(k[:, 0] + k[:, 1]), 0)``
      (the sum of ``k`` broadcast over the row's 4 columns; ``[1, 2, 3, 4]`` is the
      initializer ``scale``), and ``n`` int64 [N] = number of true ``mask`` values per row.
    :func:`multi_io_expected` computes both in numpy. Initializers: ``scale`` float32 [4],
    ``zero`` float32 scalar, ``axes`` int64 [1] (ReduceSum axes; needed at shape inference,
    so it cannot be an external/stripped initializer). Config: max_batch_size 64, prepack
    false, no labels.
    """
    model_path, config_path = model_paths(repo, name, version)
    model = _model(_multi_io_graph(), "multi-input/multi-output test model")
    onnx.checker.check_model(model, full_check=True)
    model_path.write_bytes(model.SerializeToString())
    write_config(
        config_path,
        description="Test model: x float32[N,4], k int64[N,2], mask bool[N,4] -> y, n.",
        max_batch_size=64,
    )
    return model_path


# ------------------------------------------------------------ models that cannot be served


def write_unservable_model(repo: Path, name: str, kind: str, version: str = "1") -> Path:
    """A model whose output the daemon cannot serve, to check what its refusal says.

    ``kind``: ``"sequence"`` (``x`` float32 [N, 2] -> ``SequenceConstruct`` -> ``seq``
    seq(tensor(float))), ``"map-input"`` (``x`` map(string, tensor(float)) ->
    ``DictVectorizer`` -> ``y`` float32), or ``"three-rows-only"`` (``x`` float32 [N, 2]
    -> ``Reshape`` to [3, 2]: it loads, and fails on any other number of rows, so its
    warm-up at 1 row fails).
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    inits: list[onnx.TensorProto] = []
    if kind == "sequence":
        nodes = [helper.make_node("SequenceConstruct", ["x"], ["seq"])]
        out = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
        opsets = [helper.make_opsetid("", OPSET)]
    elif kind == "map-input":
        x = helper.make_value_info("x", helper.make_map_type_proto(
            TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
        nodes = [helper.make_node("DictVectorizer", ["x"], ["y"], domain="ai.onnx.ml",
                                  string_vocabulary=["a", "b"])]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", 3)]
    elif kind == "three-rows-only":
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])
        opsets = [helper.make_opsetid("", OPSET)]
        inits = [numpy_helper.from_array(np.array([3, 2], dtype=np.int64), "shape")]
    else:
        raise ValueError(f"unknown kind {kind!r}")
    graph = helper.make_graph(nodes, name, [x], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=opsets, producer_name=PRODUCER,
                              producer_version="1")
    model.ir_version = IR_VERSION
    model_path, config_path = model_paths(repo, name, version)
    model_path.write_bytes(model.SerializeToString())
    write_config(config_path, description=f"Test model that cannot be served: {kind}",
                 max_batch_size=8)
    return model_path


def reference(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of ``model`` for ``feeds``, from ONNX Runtime in this process: what
    the platform's answers are compared with."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))
