"""The compression bench runs end to end at tiny sizes (``bench/deflate.py --quick``).

Benchmarks are not tests: this checks that the harness drives each policy with a
load generator that really negotiates permessage-deflate, and produces numbers.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_compression_bench_produces_numbers(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    options = ["--quick", "--out", str(out), "--only", "fanout-20-2k,idle"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "deflate.py"), *options],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert not result["skipped"], result["skipped"]
    rows = {(row["case"], row["metric"]): row for row in result["rows"]}
    for system in ("shared", "deflate", "none"):
        assert rows[("fanout-20-2k", "delivered_ratio")]["figures"][system] == 1.0, system
        assert rows[("fanout-20-2k", "server_cpu_us_per_op")]["figures"][system] is not None
    for system in ("shared", "deflate", "plain", "shared-ctx"):
        assert rows[("idle", "mem_per_conn_kib")]["figures"][system] is not None, system
    samples = result["samples"]["fanout-20-2k"]
    negotiated = {system: samples[system][0]["negotiated"] for system in samples}
    assert "server_no_context_takeover" in negotiated["shared"]
    assert negotiated["deflate"].startswith("permessage-deflate")
    assert "server_no_context_takeover" not in negotiated["deflate"]
    assert negotiated["none"] == ""
    if importlib.util.find_spec("picows") is not None:  # it counts the bytes on the wire
        wire = rows[("fanout-20-2k", "wire_bytes_per_message")]["figures"]
        assert wire["shared"] < wire["none"] / 2 and wire["deflate"] < wire["none"] / 2
    assert result["ratio"] and all(r["shared_bytes"] < r["raw_bytes"] for r in result["ratio"])
