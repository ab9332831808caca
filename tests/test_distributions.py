"""The three distributions' metadata follows the README's Versioning rules.

The core and the plugins share their minor version, each plugin requires a core of its
minor version and the core's extras require plugins of the core's; every distribution
carries the same MIT LICENSE (each plugin folder keeps its own copy, since a license path
cannot leave the project folder); one repository URL everywhere.

These tests read the repository (not the core's sdist, which leaves them out); ``nox -s
dist`` checks the built sdists and wheels themselves.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import xraptor

ROOT = Path(__file__).resolve().parent.parent
#: every plugin distribution of the repository (plugins/<name>/pyproject.toml)
PLUGINS = {
    folder.name: folder
    for folder in sorted((ROOT / "plugins").iterdir())
    if (folder / "pyproject.toml").is_file()
}
PROJECTS = {"xraptor": ROOT, **PLUGINS}
REPOSITORY = "https://github.com/xraptor/xraptor"
PYTHONS = ["3.11", "3.12", "3.13"]


def _pyproject(folder: Path) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    return project


def _core_version() -> Version:
    text = (ROOT / "core/xraptor/_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    assert match, "core/xraptor/_version.py has no __version__ line"
    return Version(match.group(1))


def _same_minor(version: Version) -> str:
    """The specifier of the rule: ``>=X.Y,<X.(Y+1)``."""
    major, minor = version.release[:2]
    return f"<{major}.{minor + 1},>={major}.{minor}"


def _requirements(items: list[str]) -> dict[str, Requirement]:
    return {(r := Requirement(item)).name: r for item in items}


def test_the_plugins_are_found() -> None:
    assert {"xraptor-redis", "xraptor-nats", "xraptor-postgres"} <= set(PLUGINS)
    for name, folder in PLUGINS.items():
        assert _pyproject(folder)["name"] == name, (
            f"{folder}: the folder is not named as its project"
        )


def test_the_license_is_mit_in_every_distribution_and_the_copies_are_equal() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) the xraptor authors" in text
    for name, folder in PROJECTS.items():
        project = _pyproject(folder)
        assert project["license"] == "MIT", name
        assert project["license-files"] == ["LICENSE"], name
        assert (folder / "LICENSE").read_text() == text, f"{folder}/LICENSE differs from LICENSE"


def test_every_distribution_builds_its_sdist_with_the_same_hook() -> None:
    """hatch_build.py keeps .gitignore out of the sdists; each folder has its own copy."""
    text = (ROOT / "hatch_build.py").read_text()
    for name, folder in PROJECTS.items():
        assert (folder / "hatch_build.py").read_text() == text, f"{folder}/hatch_build.py differs"
        config = tomllib.loads((folder / "pyproject.toml").read_text())
        assert "custom" in config["tool"]["hatch"]["build"]["targets"]["sdist"]["hooks"], name


def test_every_distribution_configures_its_own_tests() -> None:
    """Each sdist holds its tests and runs them from its unpacked folder (``pytest`` there)."""
    for name, folder in PROJECTS.items():
        config = tomllib.loads((folder / "pyproject.toml").read_text())
        pytest_options = config["tool"]["pytest"]["ini_options"]
        assert pytest_options["asyncio_mode"] == "auto", name
        assert pytest_options["testpaths"] == ["tests"], name
        assert "/tests" in config["tool"]["hatch"]["build"]["targets"]["sdist"]["include"], name
        assert "test" in config["project"]["optional-dependencies"], name


def test_versions_are_releases_and_plugins_share_the_core_minor_version() -> None:
    core = _core_version()
    assert str(core) == xraptor.__version__
    assert not core.is_prerelease and not core.is_devrelease, (
        f"{core} is a pre-release: `xraptor>={core.major}.{core.minor}` does not match it, so "
        "pip would take a core of the previous minor version from the package index"
    )
    for name, folder in PLUGINS.items():
        project = _pyproject(folder)
        version = Version(project["version"])
        assert not version.is_prerelease, f"{name} {version} is a pre-release"
        assert version.release[:2] == core.release[:2], (
            f"{name} {version} and xraptor {core} must share their minor version"
        )
        package = folder / name.replace("-", "_") / "__init__.py"
        written = re.search(r'^__version__ = "([^"]+)"$', package.read_text(), re.MULTILINE)
        assert written is None or written.group(1) == str(version), f"{package}: {written}"


def test_each_plugin_requires_a_core_of_its_minor_version() -> None:
    core = _core_version()
    for name, folder in PLUGINS.items():
        project = _pyproject(folder)
        requirement = _requirements(project["dependencies"])["xraptor"]
        assert str(requirement.specifier) == _same_minor(Version(project["version"])), name
        assert requirement.specifier.contains(core), f"{name} does not accept xraptor {core}"


def test_plugins_made_by_xraptor_new_plugin_require_the_core_minor_version() -> None:
    from xraptor.scaffold import XRAPTOR_BOUND

    requirement = Requirement(XRAPTOR_BOUND)
    assert requirement.name == "xraptor"
    assert str(requirement.specifier) == _same_minor(_core_version())


def test_the_core_extras_require_plugins_of_its_minor_version_and_keep_the_04_names() -> None:
    core = _core_version()
    extras: dict[str, list[str]] = _pyproject(ROOT)["optional-dependencies"]
    for extra, plugin in (
        ("redis", "xraptor-redis"),
        ("nats", "xraptor-nats"),
        ("postgres", "xraptor-postgres"),
    ):
        requirement = _requirements(extras[extra])[plugin]
        assert str(requirement.specifier) == _same_minor(core), extra
        assert requirement.specifier.contains(Version(_pyproject(PLUGINS[plugin])["version"]))
    # xraptor 0.4's extra names, as aliases of the current ones
    assert extras["redis_version"] == ["xraptor[redis]"]
    assert extras["uvloop"] == ["xraptor[speed]"]


def test_classifiers_claim_the_supported_pythons_in_every_distribution() -> None:
    for name, folder in PROJECTS.items():
        project = _pyproject(folder)
        assert project["requires-python"] == f">={PYTHONS[0]}", name
        classifiers: list[str] = project["classifiers"]
        claimed = [c.rsplit(" :: ", 1)[1] for c in classifiers if re.fullmatch(r".*:: 3\.\d+", c)]
        assert claimed == PYTHONS, name
        for expected in ("Framework :: AsyncIO", "Typing :: Typed"):
            assert expected in classifiers, f"{name}: no {expected!r}"
        assert any(c.startswith("Development Status :: ") for c in classifiers), name


def test_one_repository_url_everywhere() -> None:
    for name, folder in PROJECTS.items():
        urls: dict[str, str] = _pyproject(folder)["urls"]
        assert urls["Repository"] == REPOSITORY, name
        for label, url in urls.items():
            assert url == REPOSITORY or url.startswith((REPOSITORY + "/", REPOSITORY + "#")), (
                f"{name} {label}: {url}"
            )
    texts = [ROOT / "README.md", *(folder / "README.md" for folder in PLUGINS.values())]
    texts += [folder / "pyproject.toml" for folder in PROJECTS.values()]
    for path in texts:
        # links to an xraptor repository (not to other projects on GitHub, such as picows)
        for url in re.findall(
            r"https://github\.com/[\w.-]+/x-?raptor\b[^\s)\"'#]*", path.read_text()
        ):
            assert url == REPOSITORY or url.startswith(REPOSITORY + "/"), f"{path}: {url}"


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_plugin_readmes_link_to_the_repository_not_to_relative_paths(name: str) -> None:
    """A relative link breaks on the package index page, where the README is shown."""
    text = (PLUGINS[name] / "README.md").read_text()
    relative = [
        target
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if not re.match(r"(https?://|#|mailto:)", target)
    ]
    assert not relative, f"{name}/README.md links to relative paths: {relative}"


def test_the_core_package_index_readme_cuts_readme_md_at_headings_it_has_once() -> None:
    """pyproject.toml reorders README.md for the package index (install first) at headings."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    readme = config["tool"]["hatch"]["metadata"]["hooks"]["fancy-pypi-readme"]
    text = (ROOT / "README.md").read_text()
    markers = [
        marker
        for fragment in readme["fragments"]
        for key in ("start-at", "start-after", "end-before")
        if (marker := fragment.get(key)) is not None
    ]
    assert markers
    for marker in markers:
        assert text.count(marker) == 1, f"README.md must hold {marker!r} exactly once"
    install, development = text.index("\n## Install\n"), text.index("\n## Development\n")
    assert install < development
