"""Meta-tests: every hook and every error code is documented, and every hook is tested."""

from __future__ import annotations

from pathlib import Path

from xraptor import hookspecs
from xraptor.protocol import ErrorCode

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _hooks() -> list[str]:
    return [name for name in vars(hookspecs) if name.startswith("xraptor_")]


def test_every_hook_is_documented_and_used_by_a_test() -> None:
    tests = "".join(
        path.read_text()
        for folder in (ROOT / "tests", ROOT / "plugins")
        for path in folder.rglob("*.py")
        if path.name != "test_meta.py"
    )
    assert _hooks(), "no hooks found"
    for hook in _hooks():
        assert f"`{hook}" in README or f"def {hook}" in README, f"{hook} is not in the README"
        assert f"def {hook}" in tests, f"no test plugin implements {hook}"


def test_every_error_code_is_in_the_readme_table() -> None:
    codes = [value for name, value in vars(ErrorCode).items() if name.isupper()]
    assert len(codes) >= 15
    for code in codes:
        assert f"| `{code}` |" in README, f"error code {code} is not documented"
