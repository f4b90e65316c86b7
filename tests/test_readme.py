"""Every Python block of README.md runs as printed (the shell blocks are `make` commands that CI
runs itself)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from redis_servers import Server

README = Path(__file__).resolve().parent.parent / "README.md"
# Blocks may sit indented inside a list item.
BLOCKS = [
    textwrap.dedent(body)
    for body in re.findall(r"^ *```python\n(.*?)^ *```", README.read_text(encoding="utf-8"), flags=re.S | re.M)
]


def test_the_readme_has_its_blocks():
    assert len(BLOCKS) >= 3


@pytest.fixture(scope="module")
def redis_url():
    """The README's Redis blocks run against a real server of their own."""
    server = Server("redis")
    yield server.url
    server.close()


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_block_runs(index, capsys, monkeypatch, redis_url):
    monkeypatch.setenv("RATE_LIMIT_REDIS_URL", redis_url)
    code = compile(BLOCKS[index], f"{README.name} python block {index + 1}", "exec")
    exec(code, {"__name__": f"readme_block_{index + 1}"})
    assert capsys.readouterr().out  # every block shows what it did


def test_the_layout_names_every_module():
    text = README.read_text(encoding="utf-8")
    layout = text[text.index("## Layout") :].split("```")[1]
    repo = README.parent
    sources = [p for p in (repo / "rust").glob("*/src/**/*.rs") if p.name != "mod.rs"]
    modules = [p.stem for p in sources] + [p.name for p in (repo / "rust").glob("*/src/*/")]
    modules += [p.name for p in (repo / "python" / "flashcard_pipeline").rglob("*.py*")]
    missing = [
        name for name in modules if name not in ("__init__.py", "utils") and name not in layout
    ]
    assert not missing


@pytest.mark.parametrize(
    "document",
    ["README.md", "CHANGELOG.md", "docs/DESIGN.md", "docs/MIGRATION.md", "benches/README.md"],
)
def test_documents_speak_of_the_project_only(document):
    text = (README.parent / document).read_text(encoding="utf-8")
    # No internal planning documents, tracker numbers or paths outside the repository.
    assert not re.findall(r"SPEC|\b[Ii]ssues? #?\d+|seed/|shared/", text)
