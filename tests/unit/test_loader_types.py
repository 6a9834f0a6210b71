"""daemon.tensortypes and daemon.loader's warm-up inputs, without ONNX Runtime sessions:
ZipMap rows to [N, C], the advice for types the daemon cannot serve, synthetic inputs."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from daemon.loader import synthetic_feeds, warmup_rows
from daemon.repository import BatchingConfig, ModelConfig
from daemon.tensortypes import TensorSpec, UnsupportedType, tensor_spec, zipmap_to_array


def test_zipmap_rows_become_float32_columns_in_class_label_order() -> None:
    rows = [{"b": 0.25, "a": 0.75}, {"a": 0.5, "b": 0.5}]
    got = zipmap_to_array(rows, ("b", "a"))
    assert got.dtype == np.float32 and got.tolist() == [[0.25, 0.75], [0.5, 0.5]]
    assert zipmap_to_array([], (3, 7)).shape == (0, 2)
    # the values are ZipMap's float32 inputs: the conversion keeps every bit
    x = np.float32(1) / np.float32(3)
    assert zipmap_to_array([{0: float(x)}], (0,))[0, 0] == x


def arg(name: str, type_: str) -> Any:
    return SimpleNamespace(name=name, type=type_, shape=[None])


def test_unsupported_types_say_what_to_do() -> None:
    for type_, words in [("seq(map(int64,tensor(double)))", "options={'zipmap': False}"),
                         ("seq(tensor(float))", "options={'zipmap': False}"),
                         ("map(string,tensor(float))", "DictVectorizer"),
                         ("tensor(complex64)", "Cast node")]:
        try:
            tensor_spec(arg("p", type_), "output")
        except UnsupportedType as exc:
            assert f"output 'p' has unsupported type {type_}" in str(exc)
            assert words in str(exc), str(exc)
        else:
            raise AssertionError(type_)
    assert tensor_spec(arg("s", "tensor(string)"), "input") == TensorSpec("s", "|O", (-1,))


def version(*inputs: TensorSpec, max_batch: int = 8, batch_rows: int | None = None) -> Any:
    config = ModelConfig(max_request_rows=max_batch,
                         batching=BatchingConfig(max_run_rows=batch_rows))
    return SimpleNamespace(inputs=list(inputs), entry=SimpleNamespace(config=config))


def test_warm_up_runs_one_row_and_the_batch_size_with_zeros_and_empty_strings() -> None:
    lv = version(TensorSpec("text", "|O", (-1, 1)), TensorSpec("x", "<f4", (-1, 3, -1)),
                 max_batch=8)
    assert warmup_rows(lv) == [1, 8]
    feeds = synthetic_feeds(lv, 8)
    assert feeds["text"].shape == (8, 1) and feeds["text"].dtype == object
    assert set(feeds["text"].reshape(-1).tolist()) == {""}
    assert feeds["x"].shape == (8, 3, 1) and feeds["x"].dtype == np.float32
    assert warmup_rows(version(TensorSpec("x", "<f4", (-1, 2)), batch_rows=32)) == [1, 32]
    fixed = version(TensorSpec("x", "<i8", (2, -1)))
    assert warmup_rows(fixed) == [0]
    assert synthetic_feeds(fixed, 0)["x"].shape == (2, 1)
