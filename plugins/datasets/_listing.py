"""Reading the index files of public datasets as they really are: CRLF or LF
line ends, a missing final newline, a UTF-8 byte-order mark, blank lines and
stray spaces around names."""

from __future__ import annotations

import os

from matl_keras.errors import DataError


def read_lines(path: str, what: str) -> list[str]:
    """Non-blank, stripped lines of `path`.

    Raises:
        DataError: the file is missing; the message names it and `what` it
            was expected to hold.
    """
    if not os.path.isfile(path):
        raise DataError(f"{what}: expected the list file {path!r}, not found")
    with open(path, encoding="utf-8-sig", newline=None) as f:
        return [line.strip() for line in f if line.strip()]
