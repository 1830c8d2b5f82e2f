"""iter_pieces(): the streaming reader gives the reference documents whatever the window size."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfast.data.documents import iter_pieces
from tests.data.conftest import KERNEL_BACKENDS, reference_documents

DELIMITER = "[END_OF_DOCUMENT]"
# documents longer than small windows, delimiter lines that start with a graphic byte right
# after "X\n" (a safe cut point), one with surrounding spaces, a blank document, a CRLF-prone tail
LINES = [
    DELIMITER,
    "hello world",
    "abc",
    "xyz",
    DELIMITER,
    "more text here",
    f"  {DELIMITER} ",
    "   ",
    DELIMITER,
    "plain words here",
    "plain words here",
    DELIMITER,
    "last",
]


def _documents(path: Path, window: int, backend: str) -> list[str]:
    documents, current = [], b""
    for batch in iter_pieces(path, DELIMITER, window_bytes=window, backend=backend):
        data = batch.flat.tobytes()
        for i in range(len(batch.first)):
            if batch.first[i]:
                current = b""
            current += data[int(batch.offsets[i]) : int(batch.offsets[i + 1])]
            if batch.last[i]:
                documents.append(current.decode("utf-8"))
    return documents


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("trailing_newline", [False, True])
def test_every_window_size_gives_the_reference_documents(tmp_path, backend, newline, trailing_newline):
    """Regression: a delimiter line straddling the window end was preceded by a safe cut, so the
    document's last line break went out in a non-final piece and was kept as text."""
    path = tmp_path / "docs.txt"
    path.write_bytes((newline.join(LINES) + (newline if trailing_newline else "")).encode("utf-8"))
    expected = reference_documents(path, DELIMITER)
    assert expected == [
        "hello world\nabc\nxyz",
        "more text here",
        "plain words here\nplain words here",
        "last",
    ]
    for window in range(1, 301):
        assert _documents(path, window, backend) == expected, window
