"""Test support: follow a child process's output line by line, waiting for a line."""

from __future__ import annotations

import queue
import threading
import time
from typing import IO


class Output:
    """Collects the lines a child process writes (read on a thread, so waits can time out)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        """The first line (seen so far or to come) containing ``text``; AssertionError after ``timeout``."""
        for line in self.lines:
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)  # the stream ended: later waits fail at once too
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout} s; output:\n{self.text()}")

    def text(self) -> str:
        """Everything read so far (drains what is already queued)."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)
                break
            self.lines.append(line)
        return "".join(self.lines)
