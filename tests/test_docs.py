"""The documents name files and objects that exist: a moved module or a renamed function
breaks a reference, and this test says which (the text itself is read by people)."""

from __future__ import annotations

import importlib
import re

import pytest

from tests import REPO

DOCUMENTS = ["README.md", *sorted(p.name for p in (REPO / "docs").glob("*.md"))]
_PATH = re.compile(
    r"(?<![\w/.])((?:toolkit|analysis|experiments|tools|benchmarks|examples|tests)/[\w/]+\.py)"
    r"(?::(\d+)(?:-(\d+))?)?"
)
_NAME = re.compile(r"`((?:toolkit|analysis|experiments)(?:\.\w+)+)")
# Names that are not Python objects: the entry point group of the plugins.
_NOT_OBJECTS = {"toolkit.commands"}


def _path(doc: str):
    return REPO / doc if doc == "README.md" else REPO / "docs" / doc


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_every_file_and_line_a_document_cites_exists(doc):
    text = _path(doc).read_text()
    missing = []
    for m in _PATH.finditer(text):
        file = REPO / m.group(1)
        if not file.is_file():
            missing.append(m.group(0))
        elif m.group(2) and int(m.group(3) or m.group(2)) > len(file.read_text().splitlines()):
            missing.append(f"{m.group(0)} (past the end)")
    assert not missing, f"{doc} cites: {missing}"


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_every_dotted_name_a_document_cites_imports(doc):
    names = {m.group(1) for m in _NAME.finditer(_path(doc).read_text())} - _NOT_OBJECTS
    assert not [n for n in sorted(names) if not _resolves(n)], doc


def test_the_checks_catch_a_stale_reference():
    # A module path and a name that were moved away: both must be reported.
    assert _PATH.search("see toolkit/api.py:12").group(1) == "toolkit/api.py"
    assert not (REPO / "toolkit/api.py").exists()
    assert not _resolves("toolkit.api.fit")
    assert _resolves("toolkit.training.fit")
