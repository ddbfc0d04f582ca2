"""A program's output as lines of bounded size, with every secret the worker knows masked.

A program may print a 50 MB line with no newline, or redraw a progress bar with `\\r` for hours:
the worker reads its output in chunks and never holds more than one cut line of it, so its memory
does not grow with the line. Pure: no I/O, so both rules are tested without running a program.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# The most of one output line the worker keeps (log, tail, records); the rest of the line is
# counted and dropped. A CloudWatch event holds up to 256 KiB, so a cut line always fits one.
MAX_LINE_BYTES = 8192
# How much the worker reads from the program's pipe at a time.
READ_CHUNK_BYTES = 65536
# `\r\n`, `\n` and a lone `\r` (a redrawn progress bar) each end a line.
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
# The worker's own credentials: the program never needs them (worker/README.md), so no line may show them.
# AWS_SECURITY_TOKEN is the session token's older name, which boto3 and the AWS CLI still read.
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
# Shorter values are not real keys (an emulator's "testing"), and masking them would garble ordinary text.
MIN_SECRET_CHARS = 8
# A cut line may end with the first characters of a secret; this many or more are masked too.
MIN_SECRET_PREFIX_CHARS = 4
MASK = "*****"


def secrets_in(env: Mapping[str, str]) -> tuple[str, ...]:
    """The secret values in an environment."""
    return tuple(env[name] for name in SECRET_VARIABLES if env.get(name))


def mask(text: str, secrets: Iterable[str], *, cut: bool = False) -> str:
    """`text` with every secret of at least MIN_SECRET_CHARS replaced by MASK. A `cut` text (the rest
    of its line left out) that ends with the start of a secret has that start masked too: the rest of
    the secret was cut off."""
    for secret in secrets:
        if len(secret) < MIN_SECRET_CHARS:
            continue
        text = text.replace(secret, MASK)
        if not cut:
            continue
        for length in range(min(len(secret) - 1, len(text)), MIN_SECRET_PREFIX_CHARS - 1, -1):
            if text.endswith(secret[:length]):
                text = text[:-length] + MASK
                break
    return text


class OutputLines:
    """Turns chunks of output into lines, each cut at `max_bytes`, masking `secrets` in each.

    Holds at most `max_bytes` of a line that has not ended yet, whatever its real length.
    """

    def __init__(self, secrets: Iterable[str] = (), max_bytes: int = MAX_LINE_BYTES) -> None:
        self._secrets = tuple(secrets)
        self._max_bytes = max_bytes
        self._line = bytearray()
        self._cut_bytes = 0
        # The last chunk ended with `\r`: a `\n` that starts the next one belongs to that line break.
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[str]:
        """The lines that `chunk` completes."""
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        *ended, rest = _LINE_BREAK.split(chunk)
        lines = []
        for piece in ended:
            self._add(piece)
            lines.append(self._take())
        self._add(rest)
        return lines

    def close(self) -> list[str]:
        """The last line, when the output did not end with a line break."""
        return [self._take()] if self._line or self._cut_bytes else []

    def _add(self, piece: bytes) -> None:
        room = self._max_bytes - len(self._line)
        self._line += piece[:room]
        self._cut_bytes += max(0, len(piece) - room)

    def _take(self) -> str:
        text = mask(self._line.decode("utf-8", errors="replace"), self._secrets, cut=self._cut_bytes > 0)
        if self._cut_bytes:
            text += f" [{self._cut_bytes} more bytes of this line left out]"
        self._line = bytearray()
        self._cut_bytes = 0
        return text
