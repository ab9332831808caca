"""``bench/history_nats.py --quick`` runs end to end (benchmarks are not tests: this only
checks that the script still measures fan-out with and without history, and recovery)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from nats_support import NatsServer

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "history_nats.py"


def test_quick_history_bench_produces_numbers(private_jetstream: NatsServer) -> None:
    if not SCRIPT.exists():  # e.g. the tests of an unpacked sdist: no bench/ beside them
        pytest.skip(f"{SCRIPT} is not there (run from a checkout of the repository)")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--nats", private_jetstream.url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SCRIPT.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"delivered/expected\s+1\.00\s+1\.00", out), out
    assert re.search(r"ratio history/no history\s+\d+\.\d\d", out), out
    rates = re.search(r"read_history ([\d,]+) msgs/s; SUB with since, to a client ([\d,]+)", out)
    assert rates is not None and all(int(r.replace(",", "")) > 0 for r in rates.groups()), out
