"""What a stranger installs: the sdist and the wheel that ``python -m build`` makes.

The distributions are built once per run, without network access
(``--no-isolation``: ``build`` and ``hatchling`` come with the ``dev`` extra),
the wheel from the sdist, as the package index's users get them. Without those
two packages the tests skip locally, and fail under CI. ``.ci/run`` also runs
``twine check --strict`` on what it builds.
"""

from __future__ import annotations

import email.message
import email.parser
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = "https://github.com/asyncstop/asyncstop"
#: Markdown links and images, and HTML src/href attributes, in the long description.
LINK_TARGETS = re.compile(r"\]\(\s*<?([^)\s>]+)|\b(?:src|href)\s*=\s*[\"']([^\"']+)")


@dataclass(frozen=True)
class Distributions:
    sdist: Path
    wheel: Path

    def sdist_names(self) -> set[str]:
        """Paths inside the sdist, relative to its top folder."""
        with tarfile.open(self.sdist) as archive:
            return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}

    def wheel_names(self) -> set[str]:
        with zipfile.ZipFile(self.wheel) as archive:
            return set(archive.namelist())

    def metadata(self) -> email.message.Message:
        """The wheel's METADATA: what the package index shows."""
        with zipfile.ZipFile(self.wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            return email.parser.BytesParser().parsebytes(archive.read(name))


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Distributions:
    """The sdist, and the wheel built from it, of the working tree."""
    missing = [name for name in ("build", "hatchling") if importlib.util.find_spec(name) is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed (pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=50,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Distributions(sdist, wheel)


def _repo_files(folder: str, pattern: str) -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / folder).rglob(pattern)
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_sdist_carries_what_the_test_suite_needs(dists: Distributions) -> None:
    """The sdist has the license, the API contract, Prism's npm files, tests and benchmarks."""
    names = dists.sdist_names()
    wanted = {
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        "package.json",
        "package-lock.json",
    }
    wanted |= _repo_files("api", "*")
    wanted |= _repo_files("tests", "*.py")
    wanted |= _repo_files("benchmarks", "*.py")
    wanted |= _repo_files("asyncstop", "*.py")
    assert _repo_files("api", "*") >= {"api/openapi.yaml", "api/cancel-stop-order.txt"}
    assert wanted - names == set()


def test_the_sdist_carries_the_contract_byte_for_byte(dists: Distributions) -> None:
    """The sdist's api/ is the repo's API contract unchanged, so its tests check the same."""
    ours = {path.name: path.read_bytes() for path in (ROOT / "api").iterdir() if path.is_file()}
    with tarfile.open(dists.sdist) as archive:
        shipped = {}
        for member in archive.getmembers():
            parts = member.name.split("/")
            if len(parts) == 3 and parts[1] == "api" and member.isfile():
                extracted = archive.extractfile(member)
                assert extracted is not None
                shipped[parts[2]] = extracted.read()
    assert shipped == ours


def test_the_wheel_carries_the_license_and_only_the_package(dists: Distributions) -> None:
    """The wheel holds LICENSE in its dist-info, the typed package, and no tests or benchmarks."""
    names = dists.wheel_names()
    assert any(re.fullmatch(r"asyncstop-[^/]+\.dist-info/licenses/LICENSE", n) for n in names)
    assert "asyncstop/py.typed" in names
    outside = [n for n in names if not re.match(r"asyncstop(/|-[^/]+\.dist-info/)", n)]
    assert outside == []
    modules = {n for n in names if n.endswith(".py")}
    assert modules == _repo_files("asyncstop", "*.py")


def test_the_installed_wheel_imports_and_runs_its_command(
    dists: Distributions, tmp_path: Path
) -> None:
    """Every module of the unpacked wheel imports without the source tree, and `--help` runs."""
    shutil.unpack_archive(dists.wheel, tmp_path, format="zip")
    script = (
        "import importlib, pathlib, pkgutil, sys\n"
        "import asyncstop\n"
        f"assert pathlib.Path(asyncstop.__file__).is_relative_to({str(tmp_path)!r})\n"
        "for m in pkgutil.walk_packages(asyncstop.__path__, 'asyncstop.'):\n"
        "    importlib.import_module(m.name)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSTOP_")}
    # -P would drop the working directory from sys.path; here it is the unpacked wheel.
    imported = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "asyncstop", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert "usage:" in helped.stdout


def test_the_metadata_has_the_license_urls_and_this_python(dists: Distributions) -> None:
    """The index shows the MIT license file, the project links and this Python's classifier."""
    meta = dists.metadata()
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL") or [])
    assert set(urls) >= {"Homepage", "Repository", "Changelog", "Issues"}
    assert all(url.startswith(REPOSITORY) for url in urls.values()), urls
    python = f"Programming Language :: Python :: {sys.version_info[0]}.{sys.version_info[1]}"
    assert python in (meta.get_all("Classifier") or [])
    assert meta["Description-Content-Type"] == "text/markdown"


def test_the_long_description_has_only_absolute_links(dists: Distributions) -> None:
    """Every link and image in the package index's copy of the README is an absolute https URL."""
    description = dists.metadata().get_payload()
    assert isinstance(description, str)
    targets = [a or b for a, b in LINK_TARGETS.findall(description)]
    relative = [target for target in targets if not target.startswith("https://")]
    assert relative == []
