"""JSON lines over pipes, read with a deadline and a size bound: a peer that says too much, says
nothing, or keeps a pipe open from a forked child never blocks the reader."""

from __future__ import annotations

import json
import os
import select
import time
from typing import Any

__all__ = ["Closed", "LineReader", "TooLong", "send"]


class Closed(Exception):
    """The other end is gone (or, with ``until_exit``, the watched process ended)."""


class TooLong(Exception):
    """A line over the reader's bound."""


def send(fd: int, message: Any) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


class LineReader:
    """Lines from ``fd``, never more than ``max_line`` bytes each. ``pidfd`` (a process's
    `os.pidfd_open`) ends the wait as soon as that process has exited and nothing is left to read."""

    def __init__(self, fd: int, max_line: int = 1 << 20, pidfd: int | None = None) -> None:
        self.fd, self.max_line, self.pidfd = fd, max_line, pidfd
        self.buffer = b""

    def line(self, deadline: float) -> bytes | None:
        """The next line without its newline; None once ``deadline`` (a `time.monotonic` time) passes."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > self.max_line:
                raise TooLong(f"a message of over {self.max_line // 1024} KiB")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            watched = [self.fd] + ([self.pidfd] if self.pidfd is not None else [])
            ready, _, _ = select.select(watched, [], [], None if left == float("inf") else left)
            if self.fd in ready:
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    raise Closed("the pipe was closed")
                self.buffer += chunk
            elif self.pidfd in ready:
                # the process ended; whatever it wrote first is still ours to read
                if not select.select([self.fd], [], [], 0)[0] or not (chunk := os.read(self.fd, 1 << 16)):
                    raise Closed("the process ended")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        if len(line) > self.max_line:
            raise TooLong(f"a message of over {self.max_line // 1024} KiB")
        return line

    def message(self, deadline: float) -> Any:
        """The next line as JSON (`ValueError` when it is not JSON); None past ``deadline``."""
        line = self.line(deadline)
        return None if line is None else json.loads(line)
