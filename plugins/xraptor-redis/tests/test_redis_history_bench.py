"""``bench/history.py --quick`` runs end to end (benchmarks are not tests: this only
checks that the script still measures fan-out with and without history on Redis, and
the recovery rate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "history.py"


def test_quick_history_bench_produces_numbers(redis_url: str, tmp_path: Path) -> None:
    if not SCRIPT.exists():  # e.g. the tests of an unpacked sdist: no bench/ beside them
        pytest.skip(f"{SCRIPT} is not there (run from a checkout of the repository)")
    out = tmp_path / "history.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SCRIPT.parent,
        env={**os.environ, "XRAPTOR_BENCH_REDIS_URL": redis_url},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    (samples,) = result["fanout"].values()
    for kind in ("plain", "history"):
        (sample,) = samples[kind]
        assert sample["delivered_ratio"] == 1.0 and sample["rate"] > 0, sample
    assert result["replay"] and all(s["rate"] > 0 for s in result["replay"])
