"""What the conformance run prints (a per-group summary, the differing cases) and writes (JSON)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from .outcomes import Outcome, same_closing, why

GROUP_NAMES = {
    "1": "framing",
    "2": "pings/pongs",
    "3": "reserved bits",
    "4": "opcodes",
    "5": "fragmentation",
    "6": "UTF-8 handling",
    "7": "close handling",
    "9": "limits/performance",
    "10": "auto-fragmentation",
    "12": "compression (payloads)",
    "13": "compression (parameters)",
}


@dataclass(frozen=True, slots=True)
class Comparison:
    """One case's outcome on the echo server (the reference) and on xraptor."""

    case_id: str
    echo: Outcome
    xraptor: Outcome

    @property
    def group(self) -> str:
        return self.case_id.split(".", 1)[0]

    @property
    def same(self) -> bool:
        return same_closing(self.echo, self.xraptor)

    @property
    def why(self) -> str:
        return "" if self.same else why(self.case_id, self.echo, self.xraptor)


def versions() -> str:
    transport = os.environ.get("XRAPTOR_TRANSPORT") or "websockets"
    names = ("kosoku", "websockets", "xraptor", *(("picows",) if transport == "picows" else ()))
    found = ", ".join(f"{name} {version(name)}" for name in names)
    return f"{found}, Python {platform.python_version()}; xraptor on the {transport} transport"


def print_report(
    comparisons: Sequence[Comparison],
    allowed: Mapping[str, str],
    gating: Collection[str],
    allow_list: Path,
) -> int:
    """Print the summary and every differing case; the exit status (1: a gating difference)."""
    differing = [c for c in comparisons if not c.same]
    _print_groups(comparisons, allowed, gating)
    if differing:
        print(f"\nCases that close differently ({len(differing)}):")
        rows = [("case", "echo server", "xraptor", "why")]
        for c in differing:
            if c.case_id in allowed:
                reason = f"allowed: {allowed[c.case_id]}"
            elif c.group in gating:
                reason = c.why
            else:
                reason = f"(reported only) {c.why}".rstrip()
            rows.append((c.case_id, str(c.echo), str(c.xraptor), reason))
        _print_table(rows)
    ran, differ = {c.case_id for c in comparisons}, {c.case_id for c in differing}
    stale = sorted(case for case in allowed if case in ran and case not in differ)
    if stale:
        print(f"\nAllowed in {allow_list.name} but now the same, remove: {', '.join(stale)}")
    failing = [c for c in differing if c.group in gating and c.case_id not in allowed]
    groups = f"{min(gating, key=int)}-{max(gating, key=int)}"
    if failing:
        print(
            f"\nFAILED: {len(failing)} case(s) of groups {groups} close differently on xraptor "
            f"than on the websockets echo server and are not in {_shown(allow_list)}."
        )
        return 1
    excused = sum(c.group in gating for c in differing)
    also = f", except {excused} allowed difference(s)" if excused else ""
    print(f"\nOK: the cases of groups {groups} close as on the websockets echo server{also}.")
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _print_groups(
    comparisons: Sequence[Comparison], allowed: Mapping[str, str], gating: Collection[str]
) -> None:
    rows = [("group", "", "cases", "same", "differ", "allowed", "gates")]
    for group in sorted({c.group for c in comparisons}, key=int):
        of_group = [c for c in comparisons if c.group == group]
        differ = [c for c in of_group if not c.same]
        rows.append(
            (
                group,
                GROUP_NAMES.get(group, ""),
                str(len(of_group)),
                str(len(of_group) - len(differ)),
                str(len(differ)),
                str(sum(c.case_id in allowed for c in differ)),
                "yes" if group in gating else "no",
            )
        )
    _print_table(rows)


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


def write_json(path: Path, comparisons: Sequence[Comparison], allowed: Mapping[str, str]) -> None:
    """Every case: both outcomes, whether they match, and why not."""
    cases = [
        {
            "case": c.case_id,
            "group": c.group,
            "same": c.same,
            "allowed": allowed.get(c.case_id),
            "why": c.why,
            "echo": _outcome(c.echo),
            "xraptor": _outcome(c.xraptor),
        }
        for c in comparisons
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"versions": versions(), "cases": cases}, indent=1) + "\n")


def _outcome(outcome: Outcome) -> dict[str, object]:
    return {
        "summary": str(outcome),
        "closer": outcome.closer.value,
        "code": outcome.code,
        "client_code": outcome.client_code,
        "clean": outcome.clean,
        "note": outcome.note,
        "kosoku_verdict": outcome.verdict,
    }
