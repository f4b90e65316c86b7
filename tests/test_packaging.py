"""What a user installs: every module, the stub and the typing marker, one version, the licence.

`make test-dist` runs the whole suite against the wheel and the sdist from `make dist`, each
installed in a fresh venv, with `FLASHCARD_PIPELINE_INSTALLED_FROM` naming the file; the last test
checks that the package under test really is the one installed from it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import tomllib
from pathlib import Path

import pytest

import flashcard_pipeline

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "python" / "flashcard_pipeline"
DISTRIBUTION = "flashcard-pipeline-ratelimit"
INSTALLED = Path(flashcard_pipeline.__file__).parent


def _source_modules() -> list[str]:
    return sorted(
        ".".join(("flashcard_pipeline", *path.relative_to(SOURCE).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for path in SOURCE.rglob("*.py")
    )


@pytest.mark.parametrize("module", _source_modules())
def test_every_source_module_is_installed(module: str) -> None:
    assert importlib.import_module(module).__name__ == module


@pytest.mark.parametrize("name", ["py.typed", "_native.pyi"])
def test_typing_files_are_installed_beside_the_package(name: str) -> None:
    assert (INSTALLED / name).is_file()


def test_the_extension_is_the_abi3_build() -> None:
    # A version-specific build beside it would be imported first: a stale one would be tested.
    native = importlib.import_module("flashcard_pipeline._native").__file__
    assert native is not None and native.endswith(".abi3.so"), native


def test_the_version_is_set_once_in_cargo_toml() -> None:
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    version = cargo["workspace"]["package"]["version"]
    assert flashcard_pipeline.__version__ == version
    assert importlib.metadata.version(DISTRIBUTION) == version
    assert f"## [{version}]" in (REPO / "CHANGELOG.md").read_text()


def test_metadata_declares_the_licence_and_the_python_versions() -> None:
    metadata = importlib.metadata.metadata(DISTRIBUTION)
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.11"
    running = "Programming Language :: Python :: %d.%d" % sys.version_info[:2]
    assert running in metadata.get_all("Classifier", [])


@pytest.mark.skipif(
    "FLASHCARD_PIPELINE_INSTALLED_FROM" not in os.environ,
    reason="checks a package installed from dist/: run by make test-dist",
)
def test_the_package_under_test_is_the_one_installed_from_dist() -> None:
    installed_from = Path(os.environ["FLASHCARD_PIPELINE_INSTALLED_FROM"]).name
    assert installed_from.endswith(".tar.gz") or "-cp311-abi3-manylinux" in installed_from
    assert INSTALLED.is_relative_to(sys.prefix), INSTALLED
    assert not INSTALLED.is_relative_to(REPO / "python")
    files = importlib.metadata.files(DISTRIBUTION) or []
    assert any(file.name == "LICENSE" for file in files)
