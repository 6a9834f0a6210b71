"""String tensors in the cache key's digest and the audit trail: the canonical input
bytes (edge.audit.canonical), the record, its PostgreSQL row and ``wal dump --tensors``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from audit.record import AuditRecord, RecordError, decode_inputs
from audit.walcli import record_doc
from edge.audit import canonical, input_digest, outputs_doc

COLOR = np.array([["red"], ["caf\u00e9"]], dtype=object)
X = np.array([[0.5], [-1.0]], dtype=np.float32)


def test_string_inputs_are_framed_with_the_wire_layout_not_pointers() -> None:
    data, meta = canonical([("x1", X), ("color", COLOR)])
    header = b"color\0|O\x002,1\0"
    cafe = "caf\u00e9".encode()
    assert data.startswith(len(header).to_bytes(4, "little") + header + b"\x03\0\0\0red"
                           + len(cafe).to_bytes(4, "little") + cafe)
    assert meta == [{"name": "color", "dtype": "|O", "shape": [2, 1]},
                    {"name": "x1", "dtype": "<f4", "shape": [2, 1]}]
    # the same strings in other objects (or as numpy str) digest the same; others do not
    again = np.array([["re" + "d"], ["caf\u00e9"]], dtype=object)
    assert canonical([("color", again), ("x1", X)])[0] == data
    assert canonical([("color", again.astype(str)), ("x1", X)])[0] == data
    other = np.array([["red"], ["cafe"]], dtype=object)
    assert input_digest(canonical([("color", other), ("x1", X)])[0]) != input_digest(data)


def test_decode_inputs_reads_canonical_bytes_back() -> None:
    data, _ = canonical([("x1", X), ("color", COLOR), ("k", np.arange(3, dtype=np.int64))])
    assert decode_inputs(data) == {
        "color": {"dtype": "|O", "shape": [2, 1], "data": [["red"], ["caf\u00e9"]]},
        "k": {"dtype": "<i8", "shape": [3], "data": [0, 1, 2]},
        "x1": {"dtype": "<f4", "shape": [2, 1], "data": [[0.5], [-1.0]]},
    }
    with pytest.raises(RecordError):
        decode_inputs(data[:-3])


def record(**changes) -> AuditRecord:
    data, meta = canonical([("color", COLOR)])
    fields = dict(request_id="r1", ts=1.0, host="h", model="m", version="1", face="v1",
                  input_digest=input_digest(data), input_meta=meta,
                  outputs=outputs_doc([("output_label", np.array(["a", "b"], dtype=object)),
                                       ("output_probability", np.ones((2, 2), np.float32))]),
                  labels=["a", "b"], cached=False, latency_ms=1.0, inputs=data)
    fields.update(changes)
    return AuditRecord(**fields)


def test_string_outputs_and_labels_reach_the_row_as_json() -> None:
    rec = AuditRecord.from_payload(record().to_payload())
    row = rec.to_row()
    assert row["outputs"]["output_label"] == {"dtype": "|O", "shape": [2], "data": ["a", "b"]}
    assert row["labels"] == ["a", "b"]
    json.dumps({k: v for k, v in row.items() if k != "inputs"})  # JSONB-ready
    assert AuditRecord.from_payload(record(labels=[0, 2]).to_payload()).labels == [0, 2]


def test_a_nul_in_a_string_output_or_label_reaches_jsonb_as_a_stand_in() -> None:
    """JSONB refuses NUL: a model echoing a client's NUL must not quarantine its record
    (found by review). The WAL record keeps what was served."""
    outputs = outputs_doc([("echo", np.array(["a\x00b"], dtype=object))])
    rec = AuditRecord.from_payload(record(outputs=outputs, labels=["x\x00"]).to_payload())
    assert rec.labels == ["x\x00"]
    row = rec.to_row()
    assert row["outputs"]["echo"]["data"] == ["a\ufffdb"] and row["labels"] == ["x\ufffd"]
    assert "\\u0000" not in json.dumps({k: v for k, v in row.items() if k != "inputs"})


def test_wal_dump_prints_string_inputs_decoded_on_request() -> None:
    payload = record().to_payload()
    plain = record_doc(payload)
    assert plain["inputs_bytes"] == len(record().inputs or b"") and "input_tensors" not in plain
    doc = record_doc(payload, tensors=True)
    assert doc["input_tensors"]["color"]["data"] == [["red"], ["caf\u00e9"]]
    out = io.StringIO()
    from audit.walcli import _emit
    _emit(out, doc)
    assert "caf\u00e9" in json.loads(out.getvalue())["input_tensors"]["color"]["data"][1]
