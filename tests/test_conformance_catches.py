"""The conformance suite catches broken antennas.

``antenna_variants.py`` has a correct antenna over a simulated backend that can be
stopped and started, and copies of it each broken in one way real drivers get
wrong: names truncated, refused, case-folded, mangled or glob-matched; concurrent
posts reordered by a pool; ``unwatch`` that keeps the backend subscription (seen
by ``is_alive``, or only by the resource counts); ``close()`` that leaks a task or
a connection; publish errors that are not ``AntennaUnavailable`` or that hang
while the backend is down; state changes hidden; gaps dropped; channels not
resubscribed.

Each runs the whole suite, unchanged, with ``pytest.main`` on a generated test
module of its own; a few worker processes take the runs from one list (most of a
run is waiting, and a process pays pytest's start-up once). The correct antenna passes
every test (fault and resource tests included, none skipped); every broken one
fails, at least the test named for its mistake.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from antenna_variants import VARIANTS

import xraptor
from xraptor.testing import AntennaConformance

TESTS = Path(__file__).resolve().parent
SUITE = sorted(name for name in dir(AntennaConformance) if name.startswith("test_"))
#: processes that share the runs
WORKERS = 6

MODULE = """\
import json
from pathlib import Path

import pytest

import antenna_variants
from antenna_variants import VARIANTS, SimulatedConformance


class TestVariant(SimulatedConformance):
    antenna_class = VARIANTS[{name!r}][0]


@pytest.fixture(scope="session", autouse=True)
def _record_channels():
    antenna_variants.CHANNELS_USED.clear()
    yield
    names = sorted(antenna_variants.CHANNELS_USED)
    Path({record!r}).write_text(json.dumps(names))
"""

INI = """\
[pytest]
asyncio_default_fixture_loop_scope = function
timeout = 60
"""

#: runs the jobs of a JSON list [[module, folder], ...] with pytest.main, one at a
#: time, each job claimed first (the workers share one list)
WORKER = """\
import json
import os
import sys

import pytest

for module, folder in json.loads(sys.argv[1]):
    try:
        os.close(os.open(folder + "/claimed", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        continue
    print(f"=== {module}", flush=True)
    code = pytest.main(
        [
            module,
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            folder,
            "-c",
            folder + "/pytest.ini",
            "--junitxml",
            folder + "/report.xml",
        ]
    )
    with open(folder + "/returncode", "w") as out:
        out.write(str(int(code)))
"""


@dataclass
class Outcome:
    returncode: int
    passed: set[str] = field(default_factory=set, repr=False)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set, repr=False)
    channels: list[str] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        return "\n\n".join(f"{test}: {message}" for test, message in sorted(self.failed.items()))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every variant's run of the suite."""
    root = tmp_path_factory.mktemp("variants")
    jobs: list[list[str]] = []
    for name in VARIANTS:
        folder = root / name
        folder.mkdir()
        (folder / "pytest.ini").write_text(INI)
        module = folder / f"test_variant_{name}.py"
        module.write_text(MODULE.format(name=name, record=str(folder / "channels.json")))
        jobs.append([str(module), str(folder)])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(
                None,
                [str(TESTS), str(Path(xraptor.__file__).parents[1]), os.environ.get("PYTHONPATH")],
            )
        ),
    }
    env.pop("CI", None)
    workers = []
    for index in range(WORKERS):
        with (root / f"worker-{index}.txt").open("w") as output:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, json.dumps(jobs)],
                    cwd=root,
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )
    for worker in workers:
        worker.wait(timeout=600)
    return {name: _outcome(root / name) for name in VARIANTS}


def _outcome(folder: Path) -> Outcome:
    returncode = folder / "returncode"
    outcome = Outcome(int(returncode.read_text()) if returncode.exists() else -1)
    report = folder / "report.xml"
    if report.exists():
        for case in ElementTree.parse(report).getroot().iter("testcase"):
            test = case.get("name", "")
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            if problem is not None:
                outcome.failed[test] = problem.get("message", "")
            elif case.find("skipped") is not None:
                outcome.skipped.add(test)
            else:
                outcome.passed.add(test)
    record = folder / "channels.json"
    if record.exists():
        outcome.channels = json.loads(record.read_text())
    return outcome


def test_the_correct_antenna_passes_every_test(outcomes: dict[str, Outcome]) -> None:
    correct = outcomes["correct"]
    assert correct.returncode == 0, str(correct)
    assert sorted(correct.passed) == SUITE, (sorted(correct.skipped), str(correct))


@pytest.mark.parametrize("variant", [name for name in VARIANTS if name != "correct"])
def test_each_broken_antenna_fails(outcomes: dict[str, Outcome], variant: str) -> None:
    outcome = outcomes[variant]
    expected = VARIANTS[variant][1]
    assert outcome.returncode == 1 and outcome.failed, outcome.returncode
    assert expected in outcome.failed, f"{variant} failed {sorted(outcome.failed)}"
    # what failed is the mistake, not the harness: every test ran
    assert outcome.passed | set(outcome.failed) == set(SUITE), sorted(outcome.skipped)


def test_every_channel_is_unique_to_its_run(outcomes: dict[str, Outcome]) -> None:
    """Two runs of the same tests (as two CI jobs sharing a backend would) never use
    the same channel name: every name carries the test's own random prefix."""
    first, second = outcomes["correct"].channels, outcomes["drops_gaps"].channels
    assert first and second
    prefix = re.compile(r"xrc[0-9a-f]{12}\.")
    assert all(prefix.match(name) for name in first + second)
    assert not set(first) & set(second)
