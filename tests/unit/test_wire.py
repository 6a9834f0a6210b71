"""wire.frames and wire.messages against golden bytes and byte-level fakes.

The golden frames live in tests/data/wire/ (made by make_golden.py there). The
readers (blocking socket, its buffered FrameReader, asyncio.StreamReader) run the
same contract: the bytes go in at the boundary, through a real socketpair or a real
StreamReader; nothing inside the package is patched.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from tests.data.wire import make_golden
from wire import frames, messages
from wire.messages import MessageError

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "wire"
TIMEOUT = 2.0  # seconds a reader may wait before the test calls it blocked


WHOLE = sorted(make_golden.FRAMES)  # the golden files that hold one whole frame


def golden(name: str) -> bytes:
    return (GOLDEN_DIR / name).read_bytes()


def header(magic: bytes = b"FW", version: int = 1, kind: int = 1, length: int = 16) -> bytes:
    return frames.HEADER.pack(magic, version, kind, length)


# --- the two readers, behind one signature -----------------------------------------------

Result = tuple[list[tuple[int, dict[str, Any]]], frames.WireError]
Reader = Callable[..., Result]


def read_socket(data: bytes, *, eof: bool = True, chunk: int = 0,
                max_frame: int = frames.DEFAULT_MAX_FRAME, buffered: bool = False) -> Result:
    """Write ``data`` into one end of a socketpair (in ``chunk``-byte writes if
    given, then shut down unless ``eof`` is false); read frames from the other end
    until a WireError. A reader that blocks raises TimeoutError instead."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(TIMEOUT)

        def write() -> None:
            step = chunk or max(len(data), 1)
            for at in range(0, len(data), step):
                theirs.sendall(data[at:at + step])
            if eof:
                theirs.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=write)
        writer.start()
        got = []
        reader = frames.FrameReader(ours, max_frame) if buffered else None
        try:
            while True:
                try:
                    got.append(reader.read() if reader else frames.read_frame(ours, max_frame))
                except frames.WireError as exc:
                    return got, exc
        finally:
            writer.join(TIMEOUT)


def read_stream_reader(data: bytes, *, eof: bool = True, chunk: int = 0,
                       max_frame: int = frames.DEFAULT_MAX_FRAME) -> Result:
    """The same over an ``asyncio.StreamReader`` fed ``data`` (in chunks, yielding
    to the loop between them, if ``chunk`` is given)."""

    async def feed(reader: asyncio.StreamReader) -> None:
        step = chunk or max(len(data), 1)
        for at in range(0, len(data), step):
            reader.feed_data(data[at:at + step])
            await asyncio.sleep(0)
        if eof:
            reader.feed_eof()

    async def run() -> Result:
        reader = asyncio.StreamReader()
        feeder = asyncio.create_task(feed(reader))
        got = []
        try:
            while True:
                try:
                    got.append(await asyncio.wait_for(
                        frames.read_frame_async(reader, max_frame), TIMEOUT))
                except frames.WireError as exc:
                    return got, exc
        finally:
            await feeder

    return asyncio.run(run())


def read_buffered(data: bytes, **kwargs: Any) -> Result:
    """The same through :class:`frames.FrameReader` (one receive buffer)."""
    return read_socket(data, buffered=True, **kwargs)


@pytest.fixture(params=[read_socket, read_buffered, read_stream_reader],
                ids=["socket", "buffered", "asyncio"])
def read(request: pytest.FixtureRequest) -> Reader:
    return request.param


# --- golden files ------------------------------------------------------------------------

@pytest.mark.parametrize("name", WHOLE)
def test_encode_reproduces_golden_bytes(name: str) -> None:
    kind, payload = make_golden.FRAMES[name]
    assert frames.encode(kind, payload) == golden(name)


@pytest.mark.parametrize("name, kind", [("request_infer.frame", 1), ("response_ok.frame", 2),
                                        ("response_error.frame", 2)])
def test_golden_header_layout(name: str, kind: int) -> None:
    data = golden(name)
    assert data[:4] == b"FW\x01" + bytes([kind])
    assert int.from_bytes(data[4:8], "big") == len(data) - 8


def test_torn_golden_is_request_cut_inside_its_payload() -> None:
    whole, torn = golden("request_infer.frame"), golden("torn.frame")
    assert whole.startswith(torn)
    assert frames.HEADER.size < len(torn) < len(whole)


def test_generator_check_mode_agrees_with_committed_files() -> None:
    assert make_golden.main(["--check"]) == 0


def test_request_golden_decodes_to_infer_with_two_tensors(read: Reader) -> None:
    got, end = read(golden("request_infer.frame"))
    assert isinstance(end, frames.ConnectionClosed)
    [(kind, payload)] = got
    assert kind == frames.REQUEST
    assert payload == make_golden.REQUEST_INFER
    assert (payload["id"], payload["op"], payload["deadline_ms"]) == (7, "infer", 2000)
    [(x_name, x), (m_name, mask)] = messages.decode_tensors(payload["inputs"], "inputs")
    assert (x_name, x.dtype, x.shape) == ("x", np.dtype("<f4"), (2, 3))
    assert x.tolist() == [[0.0, 0.5, -1.5], [2.0, 1024.0, -0.25]]
    assert (m_name, mask.dtype, mask.tolist()) == ("mask", np.dtype(bool), [True, False])


def test_string_golden_holds_the_documented_layout(read: Reader) -> None:
    """``request_strings.frame``: text [2, 2] as u32 LE length + UTF-8 per element."""
    data = golden("request_strings.frame")
    [(kind, payload)], _ = read(data)
    text = payload["inputs"][0]
    assert (text["dtype"], text["shape"]) == (messages.STRING, [2, 2])
    cafe = "caf\u00e9 \u2615".encode()
    assert text["data"] == (b"\x03\0\0\0red" + b"\0\0\0\0" + len(cafe).to_bytes(4, "little")
                            + cafe + b"\x04\0\0\0blue")
    assert text["data"] in data  # raw in the frame (msgpack bin), never pickled
    [(name, arr), (_, x)] = messages.decode_tensors(payload["inputs"], "inputs")
    assert name == "text" and arr.dtype == object and arr.shape == (2, 2)
    assert arr.tolist() == [["red", ""], ["caf\u00e9 \u2615", "blue"]]
    assert all(type(e) is str for e in arr.reshape(-1)) and not arr.flags.writeable
    assert x.tolist() == [[0.5], [-2.0]]


@pytest.mark.parametrize("arr", [np.array(["a", "bb"]), np.array([b"x", b""], dtype=object),
                                 np.array([["\u00e9"], [""]], dtype=object),
                                 np.array("zero-d", dtype=object), np.empty((0, 3), dtype=object)],
                         ids=["unicode", "bytes", "2d", "0d", "empty"])
def test_string_tensor_round_trip(arr: np.ndarray) -> None:
    msg = messages.encode_tensor("s", arr)
    assert msg["dtype"] == "|O" and msg["shape"] == list(arr.shape)
    _, back = messages.decode_tensor(over_the_wire(msg))
    assert back.shape == arr.shape and back.dtype == object
    want = [e.decode() if isinstance(e, bytes) else str(e) for e in arr.reshape(-1).tolist()]
    assert back.reshape(-1).tolist() == want


def strings(shape: list[int], data: bytes) -> dict[str, Any]:
    return {"name": "s", "dtype": "|O", "shape": shape, "data": data}


@pytest.mark.parametrize("obj, words", [
    (strings([1], b"\x05\0\0\0abc"), ["element 0", "length 5", "past the end"]),
    (strings([2], b"\x01\0\0\0a\x01\0\0"), ["element 1", "length prefix"]),
    (strings([1], b"\x02\0\0\0\xff\xfe"), ["element 0", "not valid UTF-8"]),
    (strings([1], b"\x01\0\0\0ab"), ["1 bytes follow"]),
    (strings([2**40], b"\0\0\0\0"), ["cannot hold"]),
], ids=["length-past-end", "prefix-past-end", "not-utf8", "trailing", "hostile-shape"])
def test_decode_string_tensor_rejects_malformed(obj: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(MessageError) as info:
        messages.decode_tensor(obj, "inputs[0]")
    assert str(info.value).startswith("inputs[0].data:")
    for word in words:
        assert word in str(info.value)


def test_response_goldens_decode(read: Reader) -> None:
    got, end = read(golden("response_ok.frame") + golden("response_error.frame"))
    assert isinstance(end, frames.ConnectionClosed)
    [(k1, ok), (k2, err)] = got
    assert (k1, k2) == (frames.RESPONSE, frames.RESPONSE)
    assert ok == make_golden.RESPONSE_OK
    [(name, probs)] = messages.decode_tensors(ok["result"]["outputs"], "outputs")
    assert name == "probabilities" and probs.tolist() == [[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]]
    assert err == {"id": 8, "ok": False,
                   "error": {"type": "Overloaded", "message": "queue full", "retryable": True}}


def test_torn_golden_is_torn(read: Reader) -> None:
    got, end = read(golden("torn.frame"))
    assert got == []
    assert isinstance(end, frames.TornFrame)


# --- stream boundaries -------------------------------------------------------------------

def test_back_to_back_frames_in_one_buffer(read: Reader) -> None:
    stream = b"".join(golden(n) for n in WHOLE) * 2
    got, end = read(stream)
    assert got == [make_golden.FRAMES[n] for n in WHOLE] * 2
    assert isinstance(end, frames.ConnectionClosed)


def test_frames_dribbled_one_byte_at_a_time(read: Reader) -> None:
    stream = golden("response_error.frame") + golden("request_infer.frame")
    got, end = read(stream, chunk=1)
    assert [k for k, _ in got] == [frames.RESPONSE, frames.REQUEST]
    assert got[1][1] == make_golden.REQUEST_INFER
    assert isinstance(end, frames.ConnectionClosed)


def test_empty_stream_is_a_clean_close(read: Reader) -> None:
    got, end = read(b"")
    assert got == [] and isinstance(end, frames.ConnectionClosed)


@pytest.mark.parametrize("cut", range(1, len(golden("response_error.frame"))))
def test_stream_ending_inside_a_frame_is_torn(read: Reader, cut: int) -> None:
    first, second = golden("response_ok.frame"), golden("response_error.frame")
    got, end = read(first + second[:cut])
    assert got == [make_golden.FRAMES["response_ok.frame"]]
    assert isinstance(end, frames.TornFrame), f"cut after {cut} bytes gave {end!r}"


def test_empty_payload_is_bad_frame_not_torn(read: Reader) -> None:
    got, end = read(header(length=0))
    assert isinstance(end, frames.BadFrame)


# --- bad headers are refused before the payload is read -----------------------------------

@pytest.mark.parametrize("head, words", [
    (header(magic=b"HT"), ["magic", "b'HT'"]),
    (b"GET / HTTP/1.1\r\n", ["magic"]),
    (header(version=2), ["version 2", "speaks 1"]),
    (header(version=0), ["version 0"]),
    (header(kind=0), ["kind 0"]),
    (header(kind=3), ["kind 3"]),
    (header(length=1025), ["1025", "limit of 1024"]),
    (header(length=0xFFFFFFFF), [str(0xFFFFFFFF)]),
], ids=["magic", "http", "version2", "version0", "kind0", "kind3", "oversize", "max-u32"])
def test_bad_header_is_refused_without_waiting_for_the_payload(
        read: Reader, head: bytes, words: list[str]) -> None:
    # The writer stays open: a reader that went on to read the payload would block
    # and fail with TimeoutError rather than BadFrame.
    got, end = read(head, eof=False, max_frame=1024)
    assert got == []
    assert isinstance(end, frames.BadFrame)
    for word in words:
        assert word in str(end)


def test_length_equal_to_the_limit_is_accepted(read: Reader) -> None:
    frame = golden("response_error.frame")
    limit = len(frame) - frames.HEADER.size
    got, end = read(frame, max_frame=limit)
    assert got == [make_golden.FRAMES["response_error.frame"]]
    got, end = read(frame, max_frame=limit - 1, eof=False)
    assert got == [] and isinstance(end, frames.BadFrame)


@pytest.mark.parametrize("body, words", [
    (b"\xc1", ["not valid msgpack"]),                       # 0xc1 is never used
    (msgpack.packb([1, 2]), ["list", "expected a map"]),
    (msgpack.packb({"id": 1}) + b"\x00", ["not valid msgpack"]),  # trailing bytes
    (msgpack.packb({1: "int key"}), ["not valid msgpack"]),
])
def test_payload_that_is_not_one_msgpack_map_is_bad_frame(
        read: Reader, body: bytes, words: list[str]) -> None:
    got, end = read(header(length=len(body)) + body)
    assert isinstance(end, frames.BadFrame)
    for word in words:
        assert word in str(end)


def test_encode_then_decode_header_round_trip() -> None:
    frame = frames.encode(frames.RESPONSE, {"id": 1, "ok": True, "result": {}})
    kind, length = frames.decode_header(frame[:8], max_frame=1 << 20)
    assert (kind, length) == (frames.RESPONSE, len(frame) - 8)
    assert frames.decode_payload(frame[8:]) == {"id": 1, "ok": True, "result": {}}


# --- tensors -----------------------------------------------------------------------------

SHAPES = [(2, 3), (0,), (3, 0, 2), (5,), (1, 1, 1, 1)]


def sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values spanning the type (extremes included) in ``shape``."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    if dt.kind == "b":
        flat = np.arange(n) % 3 == 0
    elif dt.kind in "iu":
        info = np.iinfo(dt)
        flat = np.array([info.min, info.max, 1, 0, info.max - 1, info.min + 1] * n,
                        dtype=dt)[:n]
    else:
        flat = np.array([-1.5, 0.25, np.finfo(dt).max, np.finfo(dt).tiny, 0.0, -0.0] * n,
                        dtype=dt)[:n]
    return flat.reshape(shape)


def over_the_wire(tensor: dict[str, Any]) -> dict[str, Any]:
    """A tensor message after a real frame round trip (msgpack bin -> bytes)."""
    frame = frames.encode(frames.REQUEST, {"t": tensor})
    return frames.decode_payload(frame[frames.HEADER.size:])["t"]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", sorted(messages.DTYPES))
def test_tensor_round_trip(dtype: str, shape: tuple[int, ...]) -> None:
    arr = sample(dtype, shape)
    msg = messages.encode_tensor("t", arr)
    assert msg["dtype"] == dtype
    assert msg["shape"] == list(shape)
    assert msg["data"] == arr.tobytes()
    name, back = messages.decode_tensor(over_the_wire(msg))
    assert name == "t"
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, arr)


def test_zero_dim_tensor_round_trip() -> None:
    """A 0-d array (a scalar tensor) keeps shape [] for every dtype."""
    for dtype in sorted(messages.DTYPES):
        arr = sample(dtype, ())
        msg = messages.encode_tensor("t", arr)
        assert msg["shape"] == [], f"{dtype}: 0-d array sent with shape {msg['shape']}"
        _, back = messages.decode_tensor(over_the_wire(msg))
        assert back.shape == () and back.dtype == np.dtype(dtype)
        assert back[()] == arr[()]


@pytest.mark.parametrize("dtype", sorted(d for d in messages.DTYPES if np.dtype(d).itemsize > 1))
def test_big_endian_input_travels_little_endian(dtype: str) -> None:
    little = sample(dtype, (2, 3))
    big = little.astype(np.dtype(dtype).newbyteorder(">"))
    msg = messages.encode_tensor("t", big)
    assert msg["dtype"] == dtype
    assert msg["data"] == little.tobytes()
    _, back = messages.decode_tensor(over_the_wire(msg))
    np.testing.assert_array_equal(back, little)


def test_non_contiguous_input_is_sent_in_c_order() -> None:
    arr = np.arange(12, dtype=np.int32).reshape(3, 4)
    view = arr.T[::2]  # shape (2, 3), neither C- nor F-contiguous
    msg = messages.encode_tensor("t", view)
    assert msg["shape"] == [2, 3]
    assert msg["data"] == np.ascontiguousarray(view).tobytes()
    np.testing.assert_array_equal(messages.decode_tensor(msg)[1], view)


def test_decoded_tensor_is_a_read_only_view() -> None:
    _, arr = messages.decode_tensor(messages.encode_tensor("t", np.zeros(3, np.float32)))
    assert not arr.flags.writeable


@pytest.mark.parametrize("arr", [np.zeros(2, np.complex64), np.array(["a", 3], dtype=object),
                                 np.array([object()]), np.zeros(2, "datetime64[s]")],
                         ids=["complex64", "str-and-int", "object", "datetime64"])
def test_encode_refuses_dtypes_that_cannot_travel(arr: np.ndarray) -> None:
    with pytest.raises(MessageError, match="cannot travel on the wire"):
        messages.encode_tensor("t", arr)


def good(**changes: Any) -> dict[str, Any]:
    """A valid float32 [2, 3] tensor message with ``changes`` applied."""
    msg = messages.encode_tensor("x", np.zeros((2, 3), np.float32))
    msg.update(changes)
    return msg


@pytest.mark.parametrize("obj, field, words", [
    (good(data=b"\0" * 23), "inputs[1].data", ["23 bytes", "needs 24"]),
    (good(data=b"\0" * 25), "inputs[1].data", ["25 bytes", "needs 24"]),
    (good(shape=[3, 3]), "inputs[1].data", ["24 bytes", "needs 36"]),
    (good(shape=[0]), "inputs[1].data", ["needs 0"]),
    (good(dtype="<c8"), "inputs[1].dtype", ["'<c8'"]),
    (good(dtype="float32"), "inputs[1].dtype", ["'float32'"]),
    (good(dtype=">f4"), "inputs[1].dtype", ["'>f4'"]),
    (good(dtype=None), "inputs[1].dtype", ["None"]),
    (good(dtype=["<f4"]), "inputs[1].dtype", []),
    (good(shape=[2, -3]), "inputs[1].shape", ["non-negative"]),
    (good(shape=[-1, 3]), "inputs[1].shape", ["non-negative"]),
    (good(shape=[2.0, 3]), "inputs[1].shape", []),
    (good(shape=[True, 3], data=b"\0" * 12), "inputs[1].shape", []),
    (good(shape=[2**62, 4], data=b""), "inputs[1]", []),
    (good(shape=[2**64], data=b""), "inputs[1]", []),
    (good(data=list(range(24))), "inputs[1].data", ["raw bytes"]),
    (good(data="\0" * 24), "inputs[1].data", ["raw bytes"]),
    (good(data=None), "inputs[1].data", ["raw bytes"]),
    (good(name=3), "inputs[1].name", ["string"]),
    ([1, 2], "inputs[1]", ["map"]),
], ids=["short", "long", "shape-mismatch", "zero-size", "complex", "numpy-name",
        "big-endian", "no-dtype", "list-dtype", "negative", "minus-one", "float-dim",
        "bool-dim", "product-wraps-int64", "dim-over-int64", "list-data",
        "str-data", "no-data", "int-name", "not-a-map"])
def test_decode_tensor_rejects_malformed(obj: Any, field: str, words: list[str]) -> None:
    with pytest.raises(MessageError) as info:
        messages.decode_tensor(obj, "inputs[1]")
    message = str(info.value)
    assert message.startswith(field + ":") or message.startswith(field + "."), message
    for word in words:
        assert word in message


def test_decode_tensors_names_the_position() -> None:
    ok = messages.encode_tensor("a", np.zeros(2, np.int8))
    with pytest.raises(MessageError, match=r"^outputs\[2\]\.data:"):
        messages.decode_tensors([ok, ok, good(data=b"")], "outputs")
    with pytest.raises(MessageError, match="^outputs: expected a list"):
        messages.decode_tensors({"a": ok}, "outputs")


def test_error_is_plain_data_with_retryable_flag() -> None:
    for type_ in messages.ERROR_TYPES:
        err = messages.error(type_, "why")
        assert err == {"type": type_, "message": "why",
                       "retryable": type_ in (messages.OVERLOADED, messages.DRAINING)}
        assert msgpack.unpackb(msgpack.packb(err)) == err


def test_error_data_carries_the_field_apart_and_decodes_whatever_arrives():
    data = messages.error(messages.INVALID_INPUT, "version '3' is not loaded", "split")
    assert data == {"type": messages.INVALID_INPUT, "message": "version '3' is not loaded",
                    "retryable": False, "field": "split"}
    exc = messages.RemoteError.from_wire(data)
    assert (exc.type, exc.field, exc.message, exc.retryable) == (
        messages.INVALID_INPUT, "split", "version '3' is not loaded", False)
    assert "field" not in messages.error(messages.OVERLOADED, "busy")
    assert messages.RemoteError.from_wire(messages.error(messages.OVERLOADED, "x")).retryable
    for junk in (None, "x", [], {"type": 3, "field": 7}, {"field": ""}):
        exc = messages.RemoteError.from_wire(junk)
        assert exc.field is None and isinstance(exc.type, str)
