"""The Cython kernels against their Python references: handwritten edge cases and hypothesis inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.data import chunking
from tests.data.conftest import needs_native, samples_of_documents

pytestmark = needs_native

DELIM = b"[END]"
LINE_PARTS = st.sampled_from(
    [
        b"",
        b"a",
        b"word",
        b" ",
        b"\t",
        b"\r",
        b"[END]",
        b" [END] ",
        b"[END]x",
        b"[EN",
        b"\xc3\xa9",
        b"\x1c",
        b"X Y",
    ]
)


def _u8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


@st.composite
def line_buffers(draw) -> bytes:
    lines = draw(st.lists(st.lists(LINE_PARTS, max_size=4).map(b"".join), max_size=30))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    return ending.join(lines) + draw(st.sampled_from([b"", ending]))


def _both(name: str, *args):
    function = getattr(chunking, name)
    python = function(*args, backend="python")
    native = function(*args, backend="cython")
    return python, native


@settings(max_examples=300, deadline=None)
@given(data=line_buffers(), at_eof=st.booleans())
def test_find_delimiter_lines_against_reference(data, at_eof):
    python, native = _both("find_delimiter_lines", _u8(data), DELIM, at_eof)
    np.testing.assert_array_equal(python, native)
    assert native.dtype == np.int64 and native.shape[1:] == (2,)


def test_find_delimiter_lines_edge_cases():
    cases = [
        (b"", True, []),
        (b"[END]", True, [[0, 5]]),
        (b"[END]", False, []),  # an unterminated last line may continue in the next window
        (b"[END]\n", False, [[0, 6]]),
        (b"a\n  [END]\t\r\nb\n[END]", True, [[2, 12], [14, 19]]),
        (b"[END]x\n[EN\nD]\n", True, []),
        (b"\n\n[END]\n\n", True, [[2, 8]]),
    ]
    for data, at_eof, expected in cases:
        for backend in ("python", "cython"):
            result = chunking.find_delimiter_lines(_u8(data), DELIM, at_eof, backend=backend)
            assert result.tolist() == expected, (data, at_eof, backend)


CUT_BYTES = st.lists(st.sampled_from(list(b"ab \n\r.\t") + [0xC3, 0xA9]), max_size=80).map(bytes)


@settings(max_examples=300, deadline=None)
@given(data=CUT_BYTES, lo=st.integers(-2, 90), hi=st.integers(-2, 90))
def test_last_safe_cut_against_reference(data, lo, hi):
    python, native = _both("last_safe_cut", _u8(data), lo, hi)
    assert python == native
    if native >= 0:
        assert lo <= native <= hi and data[native - 1] == 0x0A


@settings(max_examples=200, deadline=None)
@given(data=CUT_BYTES, value=st.sampled_from([0x0A, 0x0D, 0xC3, 0x00]))
def test_find_byte_against_reference(data, value):
    python, native = _both("find_byte", _u8(data), value)
    assert python == native == data.find(bytes([value]))


def test_last_safe_cut_edge_cases():
    assert chunking.last_safe_cut(_u8(b"a\nb"), 0, 3, backend="cython") == 2
    assert chunking.last_safe_cut(_u8(b"a\r\nb"), 0, 4, backend="cython") == 3
    assert chunking.last_safe_cut(_u8(b"a \nb"), 0, 4, backend="cython") == -1  # space before the newline
    assert chunking.last_safe_cut(_u8(b"a\n b"), 0, 4, backend="cython") == -1  # space after it
    assert chunking.last_safe_cut(_u8(b"\xc3\xa9\nb"), 0, 4, backend="cython") == -1  # non-ASCII neighbour
    assert chunking.last_safe_cut(_u8(b"a\nb"), 0, 3, backend="python") == 2
    assert chunking.last_safe_cut(_u8(b""), 0, 3, backend="cython") == -1


@st.composite
def ranges(draw):
    data = draw(CUT_BYTES)
    n = draw(st.integers(0, 6))
    bounds = sorted(draw(st.lists(st.integers(0, len(data)), min_size=2 * n, max_size=2 * n)))
    starts = np.array(bounds[0::2], dtype=np.int64)
    ends = np.array(bounds[1::2], dtype=np.int64)
    final = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=np.uint8)
    return data, starts, ends, final


@settings(max_examples=300, deadline=None)
@given(case=ranges(), crlf=st.booleans())
def test_gather_documents_against_reference(case, crlf):
    data, starts, ends, final = case
    (flat_p, off_p), (flat_c, off_c) = _both("gather_documents", _u8(data), starts, ends, final, crlf)
    np.testing.assert_array_equal(flat_p, flat_c)
    np.testing.assert_array_equal(off_p, off_c)
    blank_p, blank_c = _both("blank_documents", flat_c, off_c)
    np.testing.assert_array_equal(blank_p, blank_c)


def test_gather_documents_edge_cases():
    buf = _u8(b"ab\r\ncd\r\n[END]\r\nef\n")
    flat, offsets = chunking.gather_documents(
        buf, np.array([0, 15]), np.array([8, 18]), np.array([1, 0], np.uint8), True, backend="cython"
    )
    assert flat.tobytes() == b"ab\ncdef\n" and offsets.tolist() == [0, 5, 8]
    with pytest.raises(ValueError, match="outside the buffer"):
        chunking.gather_documents(
            buf, np.array([0]), np.array([99]), np.array([1], np.uint8), False, backend="cython"
        )


UTF8_EDGES = [
    b"",
    b"plain",
    "naïve 中文 😀".encode(),
    b"\xc0\x80",  # overlong NUL
    b"\xe0\x80\xaf",  # overlong
    b"\xed\xa0\x80",  # surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf5\x80\x80\x80",
    b"ok\xe2\x82",  # truncated at the end
    b"\x80",
    b"\xef\xbf\xbf\xf0\x9f\x98\x80",
    b"a\xff",
]


@pytest.mark.parametrize("data", UTF8_EDGES)
def test_utf8_error_offset_edge_cases(data):
    python, native = _both("utf8_error_offset", _u8(data))
    assert python == native


@settings(max_examples=500, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=40), st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass"))
    )
)
def test_utf8_error_offset_against_reference(data):
    python, native = _both("utf8_error_offset", _u8(data))
    assert python == native


@settings(max_examples=200, deadline=None)
@given(data=CUT_BYTES, cuts=st.lists(st.integers(0, 80), max_size=5), max_piece=st.integers(1, 30))
def test_split_long_pieces_against_reference(data, cuts, max_piece):
    offsets = np.array(sorted({0, len(data), *[min(c, len(data)) for c in cuts]}), dtype=np.int64)
    python, native = _both("split_long_pieces", _u8(data), offsets, max_piece)
    np.testing.assert_array_equal(python, native)
    assert set(offsets.tolist()) <= set(native.tolist())
    for cut in sorted(set(native.tolist()) - set(offsets.tolist())):
        assert chunking.last_safe_cut(_u8(data), cut, cut, backend="python") == cut


@st.composite
def piece_streams(draw):
    """Documents of random ids, cut into random pieces, spread over random calls."""
    documents = draw(st.lists(st.lists(st.integers(0, 70_000), max_size=30), min_size=1, max_size=8))
    pieces = []
    for tokens in documents:
        cuts = sorted(draw(st.lists(st.integers(0, len(tokens)), max_size=3)))
        bounds = [0, *cuts, len(tokens)]
        for i in range(len(bounds) - 1):
            pieces.append((tokens[bounds[i] : bounds[i + 1]], i == 0, i == len(bounds) - 2))
    calls = sorted(draw(st.lists(st.integers(0, len(pieces)), max_size=3)))
    return documents, pieces, [0, *calls, len(pieces)]


def _run_stream(pieces, calls, bos, eos, max_len, min_len, dtype, backend):
    corpus, starts = [], []
    carry = np.empty(0, dtype=dtype)
    in_doc, written = False, 0
    for a, b in zip(calls[:-1], calls[1:], strict=True):
        chunk = pieces[a:b]
        ids = np.array([t for p in chunk for t in p[0]], dtype=np.uint32)
        offsets = np.zeros(len(chunk) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p[0]) for p in chunk])
        first = np.array([p[1] for p in chunk], dtype=np.uint8)
        last = np.array([p[2] for p in chunk], dtype=np.uint8)
        out = np.empty(len(carry) + len(ids) + 2 * len(chunk), dtype=dtype)
        out[: len(carry)] = carry
        starts_buffer = np.empty(len(out) // max_len + len(chunk) + 2, dtype=np.int64)
        out_pos, cur, in_doc, n = chunking.write_samples(
            ids, offsets, first, last, bos, eos, max_len, min_len, out, len(carry), 0, in_doc, starts_buffer,
            backend=backend,
        )  # fmt: skip
        starts.extend((starts_buffer[:n] + written).tolist())
        corpus.extend(out[:cur].tolist())
        written += cur
        carry = out[cur:out_pos].copy()
    assert not in_doc and len(carry) == 0
    return corpus, starts


@settings(max_examples=300, deadline=None)
@given(
    stream=piece_streams(),
    max_len=st.integers(1, 10),
    min_len=st.integers(1, 10),
    bos=st.sampled_from([-1, 0, 7]),
    eos=st.sampled_from([-1, 9]),
)
def test_write_samples_against_reference(stream, max_len, min_len, bos, eos):
    documents, pieces, calls = stream
    min_len = min(min_len, max_len)
    expected = samples_of_documents(
        [([bos] if bos >= 0 else []) + d + ([eos] if eos >= 0 else []) for d in documents], max_len, min_len
    )
    expected_corpus = [t for s in expected for t in s]
    expected_starts = np.cumsum([0] + [len(s) for s in expected])[:-1].tolist()
    for backend in ("python", "cython"):
        corpus, starts = _run_stream(pieces, calls, bos, eos, max_len, min_len, np.int32, backend)
        assert corpus == expected_corpus and starts == expected_starts, backend
        if max((t for d in documents for t in d), default=0) > 65535:  # checked even where dropped
            with pytest.raises(ValueError, match="does not fit uint16"):
                _run_stream(pieces, calls, bos, eos, max_len, min_len, np.uint16, backend)
        else:
            corpus16, starts16 = _run_stream(pieces, calls, bos, eos, max_len, min_len, np.uint16, backend)
            assert corpus16 == expected_corpus and starts16 == starts


def test_write_samples_rejects_inconsistent_flags():
    ids = np.array([1, 2], dtype=np.uint32)
    offsets = np.array([0, 1, 2], dtype=np.int64)
    out = np.empty(8, dtype=np.uint16)
    starts = np.empty(8, dtype=np.int64)
    for backend in ("python", "cython"):
        with pytest.raises(ValueError, match="while another is open"):
            chunking.write_samples(
                ids, offsets, np.array([1, 1], np.uint8), np.array([0, 1], np.uint8),
                -1, -1, 4, 1, out, 0, 0, False, starts, backend=backend,
            )  # fmt: skip
        with pytest.raises(ValueError, match="never started"):
            chunking.write_samples(
                ids, offsets, np.array([0, 1], np.uint8), np.array([1, 1], np.uint8),
                -1, -1, 4, 1, out, 0, 0, False, starts, backend=backend,
            )  # fmt: skip


def test_resolve_backend():
    assert chunking.resolve_backend("python") == "python"
    assert chunking.resolve_backend("auto") == "cython"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        chunking.resolve_backend("rust")  # type: ignore[arg-type]
