"""The fence around mongoeco's internals (halochat/db/mongoeco_flat.py, docs/embedded-db.md):
INTERNALS lists exactly what the module touches, and a mongoeco whose internals differ stops
the embedded database at start-up with a message saying why."""

import ast
import re
from pathlib import Path

import mongoeco
import pytest
from mongoeco.engines.sqlite import SQLiteEngine

from halochat.db import embedded, mongoeco_flat

SOURCE = Path(mongoeco_flat.__file__).read_text()


def touched_internals() -> set[str]:
    """Underscore names the module reads from others (attributes, imports, names in
    strings), less the ones it defines itself; dunders aside."""
    tree = ast.parse(SOURCE)
    own: set[str] = set()
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        own.add(sub.id)
                    elif isinstance(sub, ast.Attribute) and isinstance(
                        sub.value, ast.Name | ast.Attribute
                    ):
                        base = sub.value
                        if (isinstance(base, ast.Name) and base.id in {"self", "flat"}) or (
                            isinstance(base, ast.Attribute) and base.attr == "_flat"
                        ):
                            own.add(sub.attr)
        if isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mongoeco")
        ):
            used |= {alias.name for alias in node.names}
            used |= {part for part in node.module.split(".") if part.startswith("_")}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            used |= set(re.findall(r"^_[a-z_]+_in_collection$", node.value))
    # Own names count when mongoeco's engine has them too (overrides, the stand-in's).
    names = {n for n in used | own if n.startswith("_") and not n.startswith("__")}
    return {n for n in names if n not in own or hasattr(SQLiteEngine, n)}


def listed_internals() -> set[str]:
    names = {n for names in mongoeco_flat.INTERNALS.values() for n in names}
    modules = {part for owner in mongoeco_flat.INTERNALS for part in re.split(r"[.:]", owner)}
    return {n for n in names | modules if n.startswith("_") and not n.startswith("__")}


def test_internals_list_is_what_the_module_touches() -> None:
    assert touched_internals() == listed_internals()


def test_installed_mongoeco_matches_the_fence() -> None:
    assert mongoeco.__version__ == mongoeco_flat.PINNED_VERSION
    assert mongoeco_flat.internals_problems() == []


def test_changed_internals_stop_the_start_loudly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delattr(SQLiteEngine, "_index_value")
    monkeypatch.setattr(SQLiteEngine, "_load_indexes", lambda self, db_name: [])
    problems = mongoeco_flat.internals_problems()
    assert "mongoeco.engines.sqlite:SQLiteEngine._index_value is gone" in problems
    assert any(p.startswith("SQLiteEngine._load_indexes(self, db_name)") for p in problems)
    monkeypatch.undo()

    monkeypatch.setattr(mongoeco, "__version__", "4.12.0")
    with pytest.raises(mongoeco_flat.MongoecoInternalsChanged, match=r"4\.12\.0 installed"):
        mongoeco_flat.adapted_engine(str(tmp_path / "x.sqlite3"))
    # The child's command line: exits with the reason before serving or patching anything.
    with pytest.raises(SystemExit, match=r"embedded database: .*mongoeco\[wire\]==4.11.0"):
        embedded.main(["--data-dir", str(tmp_path)])
    assert not (tmp_path / embedded.STATE_FILE).exists()
