"""Every ```python block of the README runs as written.

Each block runs on its own in a fresh interpreter (so each has its own imports),
with ``8765`` replaced by a free port. An HTML comment on the line before a block
says how to run it:

* ``<!-- snippet: server -->``: a server; it must listen, say so in its log, answer
  ``/health``, and exit 0 on SIGINT;
* ``<!-- snippet: demo -->``: a client; it runs while ``xraptor demo`` serves the port;
* ``<!-- snippet: pytest -->``: a test module; pytest runs it (asyncio ``auto`` mode)
  and every test in it must pass;
* ``<!-- snippet: needs MODULE ... -->``: skipped unless every MODULE can be imported
  (``xraptor_redis``, ``xraptor_nats``: blocks that select a plugin's antenna);

directives combine with ``;``. Any other block must run to completion and exit 0.
"""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from core_support import free_port, wait_for_port
from output_support import Output

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"<!--\s*snippet:\s*(.*?)\s*-->")
MODES = {"server", "demo", "pytest"}
TIMEOUT = 30
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


@dataclass(frozen=True)
class Snippet:
    line: int
    heading: str
    code: str
    mode: str  # "script", "server" or "demo"
    needs: tuple[str, ...]

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.heading})"


def snippets(text: str) -> list[Snippet]:
    found: list[Snippet] = []
    lines = text.splitlines()
    heading, previous, index = "top", "", 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.strip() == "```python":
            start = index + 1
            end = lines.index("```", start)
            mode, needs = "script", ()
            marker = MARKER.fullmatch(previous.strip())
            if marker:
                mode, needs = _directives(marker.group(1), start)
            found.append(Snippet(start, heading, "\n".join(lines[start:end]) + "\n", mode, needs))
            index = end
        if line.strip():
            previous = line
        index += 1
    return found


def _directives(text: str, line: int) -> tuple[str, tuple[str, ...]]:
    mode, needs = "script", ()
    for directive in filter(None, (part.strip() for part in text.split(";"))):
        words = directive.split()
        if words[0] == "needs" and len(words) > 1:
            needs = tuple(words[1:])
        elif directive in MODES:
            mode = directive
        else:  # a typo must not skip a block silently
            raise AssertionError(f"README.md:{line}: unknown snippet directive {directive!r}")
    return mode, needs


SNIPPETS = snippets(README.read_text())


def test_the_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 10
    assert {s.mode for s in SNIPPETS} == {"script", "server", "demo", "pytest"}
    assert sum(bool(s.needs) for s in SNIPPETS) <= 4  # keep the skipped ones few


@pytest.mark.parametrize("snippet", SNIPPETS, ids=str)
def test_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    missing = [name for name in snippet.needs if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install {' '.join(missing)})")
    port = free_port()
    script = tmp_path / ("test_snippet.py" if snippet.mode == "pytest" else "snippet.py")
    script.write_text(snippet.code.replace("8765", str(port)))
    if snippet.mode == "server":
        _serve(script, port)
    elif snippet.mode == "demo":
        demo = subprocess.Popen(
            [sys.executable, "-m", "xraptor.cli", "demo", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            wait_for_port(port, demo)
            _run(script)
        finally:
            demo.terminate()
            demo.wait(20)
    elif snippet.mode == "pytest":
        result = subprocess.run(
            [*PYTEST, "-o", "asyncio_mode=auto", script.name],
            cwd=script.parent,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0 and " passed" in result.stdout, result.stdout + result.stderr
    else:
        _run(script)


def _run(script: Path) -> None:
    result = subprocess.run(
        [sys.executable, script.name],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _serve(script: Path, port: int) -> None:
    process = subprocess.Popen(
        [sys.executable, script.name],
        cwd=script.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    output = Output(process.stdout)
    try:
        wait_for_port(port, process)
        output.wait_for(f"xraptor listening on ws://localhost:{port}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            assert answer.status == 200
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(TIMEOUT)
    assert code == 0, output.text()
