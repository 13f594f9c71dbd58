"""The dependency rules of STYLE.md, read from the source: no import cycles, layers respected.

Every import counts, including those inside functions (a lazy import still ties two modules
together). Runs without any service.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("backend", "worker", "dashboard")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports (a `from package import name` of a submodule counts
    as importing that submodule)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    files = {
        _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }
    modules = set(files)
    graph = {}
    for name, path in files.items():
        # a package's __init__ is imported with each of its modules; that edge is not a cycle
        graph[name] = {m for m in _imports(path, modules) if m != name and not name.startswith(m)}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _folder(module: str) -> str:
    """backend.jobs.service -> backend.jobs; top-level modules stand for themselves."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_module_imports_itself_back():
    assert _cycles(_graph()) == []


def test_no_domain_folder_imports_itself_back():
    folders: dict[str, set[str]] = defaultdict(set)
    for module, targets in _graph().items():
        folders[_folder(module)] |= {_folder(t) for t in targets if _folder(t) != _folder(module)}
    assert _cycles(folders) == []


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("dashboard", ("backend", "worker")), ("backend", ("worker",))],
)
def test_layers(package, forbidden):
    offending = {
        f"{module} -> {target}"
        for module, targets in _graph().items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] in forbidden
    }
    assert offending == set()


def test_the_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


JOB_STATE = {"status", "progress_iter", "progress_total", "heartbeat_at", "cancel_requested"}


def _writes_job_state(source: str) -> bool:
    """An UPDATE of the jobs table, or an assignment to one of a job's state attributes."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "update":
            if any(getattr(arg, "id", None) == "Job" for arg in node.args):
                return True
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Attribute) and t.attr in JOB_STATE for t in targets):
            return True
    return False


def test_only_the_jobs_service_writes_job_state():
    """Job.status, progress and heartbeat change in backend/jobs/service.py alone."""
    writers = {
        path.relative_to(ROOT).as_posix()
        for package in ("backend", "worker")
        for path in (ROOT / package).rglob("*.py")
        if _writes_job_state(path.read_text(encoding="utf-8"))
    }
    assert writers == {"backend/jobs/service.py"}


def test_the_job_state_check_sees_writes():
    assert _writes_job_state("session.execute(update(Job).values(status=s))")
    assert _writes_job_state("job.status = JobStatus.failed")
    assert not _writes_job_state("ok = job.status == JobStatus.succeeded")
