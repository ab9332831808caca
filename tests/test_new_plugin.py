"""``xraptor new-plugin NAME``: the generated project installs, its tests pass, and
``xraptor plugins`` finds its antenna; bad names and used folders are refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from xraptor.cli import main
from xraptor.scaffold import XRAPTOR_BOUND, ScaffoldError, names_for

CORE = Path(__file__).resolve().parent.parent / "core"


def _env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [*map(str, paths), str(CORE), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.pop("XRAPTOR_DISABLE_PLUGINS", None)
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{output}"
    return output


@pytest.mark.timeout(120)
def test_the_generated_plugin_installs_and_passes_its_tests(tmp_path: Path) -> None:
    project = tmp_path / "xraptor-demo-bus"
    site = tmp_path / "site"
    env = _env()
    out = _run(
        [sys.executable, "-m", "xraptor.cli", "new-plugin", "demo-bus", "--dir", str(project)],
        tmp_path,
        env,
        30,
    )
    assert "created xraptor-demo-bus" in out
    pyproject = (project / "pyproject.toml").read_text()
    assert 'name = "xraptor-demo-bus"' in pyproject
    assert f'"{XRAPTOR_BOUND}"' in pyproject
    assert '[project.entry-points.xraptor]\ndemo-bus = "xraptor_demo_bus"' in pyproject
    assert "[project.optional-dependencies]\ntest = [" in pyproject
    antenna = (project / "xraptor_demo_bus" / "antenna.py").read_text()
    assert "class DemoBusAntenna(xraptor.Antenna):" in antenna
    assert "TODO" in antenna
    assert "backend_fault" in (project / "tests" / "conftest.py").read_text()
    assert (project / "README.md").is_file()

    # it installs (a wheel built by its own build backend), without touching this venv
    _run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), "."],
        project,
        env,
        90,
    )
    assert (site / "xraptor_demo_bus" / "antenna.py").is_file()

    # its tests run, from the installed package, and pass (the fault tests skip)
    env = _env(site)
    out = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"],
        project,
        env,
        90,
    )
    summary = re.search(r"(\d+) passed, 3 skipped in ", out)
    assert summary is not None and int(summary[1]) >= 15, out
    assert "no backend_fault fixture" in out

    # and xraptor finds it through its entry point
    out = _run([sys.executable, "-m", "xraptor.cli", "plugins"], tmp_path, env, 30)
    assert "demo-bus: xraptor-demo-bus 0.1.0" in out
    assert "antennas: demo-bus" in out
    assert "schemes: demo-bus://" in out


@pytest.mark.parametrize(
    "name",
    ["Postgres", "my_bus", "1bus", "my--bus", "bus-", "", "a" * 41, "my bus", "bús"],
)
def test_bad_names_are_refused(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-plugin", name, "--dir", str(tmp_path / "p")]) == 2
    assert "invalid plugin name" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_the_prefix_and_the_builtin_name_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-plugin", "xraptor-pg", "--dir", str(tmp_path / "p")]) == 2
    assert "without the 'xraptor-' prefix (xraptor new-plugin pg)" in capsys.readouterr().err
    assert main(["new-plugin", "memory", "--dir", str(tmp_path / "p")]) == 2
    assert "built-in antenna" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_an_existing_folder_is_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "xraptor-pg"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    assert main(["new-plugin", "pg", "--dir", str(folder)]) == 2
    assert "exists and is not empty: nothing was written" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
    file = tmp_path / "file"
    file.write_text("")
    assert main(["new-plugin", "pg", "--dir", str(file)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_an_empty_folder_and_the_default_folder_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["new-plugin", "pg", "--dir", str(empty)]) == 0
    assert (empty / "xraptor_pg" / "antenna.py").is_file()
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", "my-bus2"]) == 0
    assert (tmp_path / "xraptor-my-bus2" / "xraptor_my_bus2" / "__init__.py").is_file()


def test_names() -> None:
    names = names_for("my-bus")
    assert (names.name, names.dist, names.package, names.cls) == (
        "my-bus",
        "xraptor-my-bus",
        "xraptor_my_bus",
        "MyBusAntenna",
    )
    assert names_for("postgres").cls == "PostgresAntenna"
    with pytest.raises(ScaffoldError, match="invalid plugin name '-bus'"):
        names_for("-bus")  # the command line takes it for an option anyway
