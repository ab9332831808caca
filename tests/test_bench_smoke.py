"""The benchmark harness runs end to end at tiny sizes (``bench/run.py --quick``).

Benchmarks are not tests: this only checks that the harness still drives this
xraptor and the raw baseline and produces numbers. It needs no backend, no picows
(it falls back to the websockets client) and none of the peers' virtualenvs. Where the
xraptor-picows plugin is installed, xraptor on the picows transport runs too. Where uvicorn is
installed (the ``test`` extra has it), the same app served through ``asgi_app()`` by
uvicorn (``xraptor-asgi``) runs the request/response and fan-out cases too.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_produces_numbers(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "xraptor/raw" in proc.stdout
    result = json.loads(out.read_text())
    assert not result["skipped"], result["skipped"]
    rows = {(row["case"], row["metric"]): row for row in result["rows"]}
    for key in [("rr", "rate"), ("fanout-memory-10", "rate"), ("idle-plain", "mem_per_conn_kib")]:
        for system in ("xraptor", "raw"):
            assert rows[key][system] is not None and rows[key][system] > 0, (key, system)
        assert rows[key]["vs_raw"] is not None and rows[key]["vs_raw"] > 0, key
    assert rows[("fanout-memory-10", "delivered_ratio")]["xraptor"] == 1.0
    samples = result["samples"]["rr"]["xraptor"]
    assert samples[0]["round_trips"] >= 100
    # the peers served from their own virtualenvs are left out of a smoke run, and say so
    for peer in ("sio", "broadcaster"):
        assert peer in result["left_out"], result["left_out"]
    if importlib.util.find_spec("xraptor_picows") is None:
        assert "xraptor-picows" in result["left_out"], result["left_out"]
    else:
        for key in [("rr", "rate"), ("fanout-memory-10", "rate")]:
            assert rows[key]["xraptor-picows"] > 0, key
            assert rows[key]["picows_vs_raw"] > 0, key
        assert rows[("fanout-memory-10", "delivered_ratio")]["xraptor-picows"] == 1.0
    if importlib.util.find_spec("uvicorn") is None:
        assert "xraptor-asgi" in result["left_out"], result["left_out"]
        return
    for key in [("rr", "rate"), ("fanout-memory-10", "rate")]:
        assert rows[key]["xraptor-asgi"] is not None and rows[key]["xraptor-asgi"] > 0, key
        assert rows[key]["asgi_vs_raw"] is not None and rows[key]["asgi_vs_raw"] > 0, key
    assert rows[("fanout-memory-10", "delivered_ratio")]["xraptor-asgi"] == 1.0
    assert result["samples"]["rr"]["xraptor-asgi"][0]["round_trips"] >= 100
    assert "asgi/raw" in proc.stdout
