"""labkit.grading.channel: JSON lines over pipes, with a deadline and a size bound."""

from __future__ import annotations

import os
import select
import signal
import time

import pytest

from labkit.grading.channel import Closed, LineReader, TooLong, send

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pipe():
    r, w = os.pipe()
    ends = {"r": r, "w": w}
    yield ends
    for fd in ends.values():
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _close_write(ends) -> None:
    os.close(ends["w"])
    ends["w"] = None


def _soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def test_messages_round_trip(pipe):
    reader = LineReader(pipe["r"])
    messages = [{"run": 0, "inputs": {"args": [1, [2, 3]]}}, [1, "two", None], "text", 3.5, None, {"ü": "ñ\n"}]
    for m in messages:
        send(pipe["w"], m)
    assert [reader.message(_soon()) for _ in messages] == messages


def test_line_returns_bytes_without_newline(pipe):
    os.write(pipe["w"], b'{"a": 1}\n[2]\n')
    reader = LineReader(pipe["r"])
    assert reader.line(_soon()) == b'{"a": 1}'
    assert reader.line(_soon()) == b"[2]"


def test_send_writes_exactly_one_line(pipe):
    send(pipe["w"], {"text": "multi\nline"})
    _close_write(pipe)
    data = os.read(pipe["r"], 1 << 16)
    assert data.endswith(b"\n") and data.count(b"\n") == 1


def test_large_message_round_trips(pipe):
    big = {"value": list(range(200_000))}  # well over a pipe's buffer: needs several reads
    pid = os.fork()
    if pid == 0:
        try:
            os.close(pipe["r"])
            send(pipe["w"], big)
        finally:
            os._exit(0)
    try:
        _close_write(pipe)
        assert LineReader(pipe["r"], max_line=1 << 24).message(_soon(20)) == big
    finally:
        os.waitpid(pid, 0)


def test_line_split_across_writes_is_reassembled(pipe):
    reader = LineReader(pipe["r"])
    parts = [b'{"he', b'llo": ', b'"wor', b'ld"}']
    for part in parts:
        os.write(pipe["w"], part)
        assert reader.line(time.monotonic() + 0.05) is None  # no newline yet: nothing to return
    os.write(pipe["w"], b"\n")
    assert reader.message(_soon()) == {"hello": "world"}


def test_deadline_passes_with_nothing_written(pipe):
    reader = LineReader(pipe["r"])
    start = time.monotonic()
    assert reader.line(start + 0.2) is None
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 2.0
    assert reader.message(time.monotonic() + 0.1) is None


def test_deadline_already_past_returns_none(pipe):
    assert LineReader(pipe["r"]).line(time.monotonic() - 1) is None


def test_buffered_line_is_returned_even_past_the_deadline(pipe):
    os.write(pipe["w"], b"1\n2\n")
    reader = LineReader(pipe["r"])
    assert reader.line(_soon()) == b"1"
    assert reader.line(time.monotonic() - 1) == b"2"


def test_partial_line_survives_a_timeout(pipe):
    reader = LineReader(pipe["r"])
    os.write(pipe["w"], b"[1, ")
    assert reader.line(time.monotonic() + 0.1) is None
    os.write(pipe["w"], b"2]\n")
    assert reader.message(_soon()) == [1, 2]


def test_line_over_max_line_raises_without_a_newline(pipe):
    reader = LineReader(pipe["r"], max_line=100)
    os.write(pipe["w"], b"x" * 300)  # the newline never comes
    start = time.monotonic()
    with pytest.raises(TooLong):
        reader.line(_soon(10))
    assert time.monotonic() - start < 5  # raised on the bound, not at the deadline


def test_line_over_max_line_raises_with_a_newline(pipe):
    reader = LineReader(pipe["r"], max_line=100)
    os.write(pipe["w"], b"y" * 150 + b"\n")
    with pytest.raises(TooLong):
        reader.line(_soon())


def test_line_of_exactly_max_line_is_accepted(pipe):
    reader = LineReader(pipe["r"], max_line=100)
    os.write(pipe["w"], b"z" * 100 + b"\n")
    assert reader.line(_soon()) == b"z" * 100


def test_closing_the_write_end_raises_closed(pipe):
    reader = LineReader(pipe["r"])
    _close_write(pipe)
    with pytest.raises(Closed):
        reader.line(_soon())


def test_data_before_close_is_returned_first(pipe):
    reader = LineReader(pipe["r"])
    send(pipe["w"], {"last": True})
    _close_write(pipe)
    assert reader.message(_soon()) == {"last": True}
    with pytest.raises(Closed):
        reader.line(_soon())


def test_invalid_json_raises_value_error(pipe):
    reader = LineReader(pipe["r"])
    os.write(pipe["w"], b"{not json}\n\xff\xfe\n")
    with pytest.raises(ValueError):
        reader.message(_soon())
    with pytest.raises(ValueError):  # not even UTF-8
        reader.message(_soon())


# -- a watched process that exits while another still holds the pipe open ------------------------


def _fork(body) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid


def _reap(*pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _watched(pipe, child_body):
    """Fork the watched child and a second, long-sleeping one that keeps the write end open; close
    this process's own write end. Returns (child, holder, pidfd)."""
    child = _fork(child_body)
    holder = _fork(lambda: time.sleep(60))
    _close_write(pipe)
    return child, holder, os.pidfd_open(child)


def test_without_pidfd_an_open_write_end_blocks_until_the_deadline(pipe):
    holder = _fork(lambda: time.sleep(60))
    try:
        _close_write(pipe)
        start = time.monotonic()
        assert LineReader(pipe["r"]).line(start + 0.3) is None  # what pidfd is for
    finally:
        _reap(holder)


def test_pidfd_ends_the_wait_when_the_watched_child_exits(pipe):
    child, holder, pidfd = _watched(pipe, lambda: time.sleep(0.2))
    try:
        reader = LineReader(pipe["r"], pidfd=pidfd)
        start = time.monotonic()
        with pytest.raises(Closed):
            reader.line(start + 30)
        assert time.monotonic() - start < 10
    finally:
        os.close(pidfd)
        _reap(child, holder)


def test_pidfd_still_returns_what_the_child_wrote_before_exiting(pipe):
    w = pipe["w"]

    def body():
        send(w, {"first": 1})
        send(w, {"second": [2, 3]})

    child, holder, pidfd = _watched(pipe, body)
    try:
        assert select.select([pidfd], [], [], 10)[0]  # the child has exited by now
        reader = LineReader(pipe["r"], pidfd=pidfd)
        start = time.monotonic()
        assert reader.message(start + 30) == {"first": 1}
        assert reader.message(start + 30) == {"second": [2, 3]}
        with pytest.raises(Closed):
            reader.line(start + 30)
        assert time.monotonic() - start < 10
    finally:
        os.close(pidfd)
        _reap(child, holder)


def test_pidfd_returns_a_large_message_written_before_exit(pipe):
    w = pipe["w"]
    payload = "p" * 50_000  # most of a pipe's buffer: the child exits before the reader starts

    def body():
        send(w, payload)

    child, holder, pidfd = _watched(pipe, body)
    try:
        assert select.select([pidfd], [], [], 10)[0]
        reader = LineReader(pipe["r"], pidfd=pidfd)
        assert reader.message(_soon(30)) == payload
        with pytest.raises(Closed):
            reader.line(_soon(30))
    finally:
        os.close(pidfd)
        _reap(child, holder)


def test_pidfd_waits_normally_while_the_child_is_alive(pipe):
    child, holder, pidfd = _watched(pipe, lambda: time.sleep(60))
    try:
        start = time.monotonic()
        assert LineReader(pipe["r"], pidfd=pidfd).line(start + 0.2) is None
        assert time.monotonic() - start < 2.0
    finally:
        os.close(pidfd)
        _reap(child, holder)
