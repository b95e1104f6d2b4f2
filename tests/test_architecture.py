"""The layering of docs/architecture.md, checked on the source: the domain imports no
transport, no module-level import cycle anywhere in halochat/, domain modules stay small."""

import ast
from pathlib import Path

import halochat

ROOT = Path(halochat.__file__).parent
DOMAIN_MAX_LINES = 250


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The halochat modules `path` imports at module level (imports inside functions run
    later and cannot form a cycle at import time)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("halochat"):
            assert node.module is not None
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("halochat"))
    return {m for m in out if m in known}


def test_the_domain_imports_no_transport() -> None:
    known = modules()
    for name, path in known.items():
        if name.startswith("halochat.domain"):
            bad = {
                m
                for m in imports(path, known)
                if m.startswith(("halochat.ws", "halochat.routes", "halochat.jobs"))
            }
            assert not bad, f"{name} imports {sorted(bad)}"


def test_no_import_cycle() -> None:
    known = modules()
    graph = {name: imports(path, known) for name, path in known.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycle = [*trail[trail.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_domain_modules_stay_small() -> None:
    for path in (ROOT / "domain").rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= DOMAIN_MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines"
