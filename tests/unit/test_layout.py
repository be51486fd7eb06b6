"""The house rules the layout promises (README, Development): no import cycles in
controller/, a pure domain/, and a loop that knows no endpoint kind."""

import ast
from pathlib import Path

from controller.drivers.contextualization import parse

ROOT = Path(__file__).resolve().parents[2] / "controller"
# none: issue 13 broke packing <-> scheduling (the decision's types are in domain/fleet.py)
KNOWN_CYCLES: set[frozenset[str]] = set()


def imports() -> dict[str, set[str]]:
    """Every module of controller/ and the modules of controller/ it imports (also those
    imported only for type checking)."""
    mods = {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(
        ".__init__"): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.add(frozenset(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(imports()) <= KNOWN_CYCLES


def test_the_domain_does_no_io_and_the_loop_knows_no_kind():
    graph = imports()
    for m, deps in graph.items():
        if m.startswith("controller.domain."):
            assert not {d for d in deps if not d.startswith("controller.domain.")}, m
    loop = (ROOT / "reconcile" / "loop.py").read_text()
    for kind in ("SshDriver", "PulumiDriver", "LocalDriver", "HostPoolEndpoint",
                 "CloudEndpoint", "isinstance"):
        assert kind not in loop
    assert "Reconciler" not in (ROOT / "reconcile" / "hosts.py").read_text()


# what starts a process or a server: a unit test that needs one belongs in tests/integration
STARTS = {"subprocess", "multiprocessing", "http.server", "socketserver", "uvicorn",
          "controller.harness", "tests.pgserver", "tests.sshhosts", "tests.slurmcluster",
          "tests.sgecluster"}
SERVER_FIXTURES = {"make_controller", "postgres_server", "ctrl"}


def test_the_unit_tests_start_no_process_and_no_server():
    unit = Path(__file__).resolve().parent
    found = []
    for f in sorted(unit.glob("test_*.py")):
        tree = parse(f.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{f.name} imports {n}" for n in names
                      if n in STARTS or n.split(".")[0] in STARTS]
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found += [f"{f.name}::{node.name} asks for {a.arg}" for a in node.args.args
                          if a.arg in SERVER_FIXTURES]
    assert found == []
