"""The layout is the architecture: each stage imports only the stages below it that it needs.

``ALLOWED`` is the README's "Architecture" table in code. A new import across stages fails
here until it is added to the table, and the table itself may only point downward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "serve_drift"

# Bottom to top; a stage may import only stages of strictly lower layers.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"_env", "errors", "files", "messages"}),
    frozenset({"config", "request_context", "capture", "telemetry", "credentials", "corruptions"}),
    frozenset({"reference", "detectors", "eventlog", "ingress", "alerts"}),
    frozenset({"models", "replica"}),
    frozenset({"monitor"}),
    frozenset({"apps", "routing"}),
    frozenset({"tools"}),
)

ALLOWED: dict[str, frozenset[str]] = {
    "_env": frozenset(),
    "errors": frozenset(),
    "files": frozenset(),
    "messages": frozenset(),
    "config": frozenset({"_env"}),
    "request_context": frozenset({"messages"}),
    "capture": frozenset({"errors"}),
    "telemetry": frozenset({"_env"}),
    "credentials": frozenset(),
    # Image corruptions for drills: pure image functions, public, below everything that uses them.
    "corruptions": frozenset({"errors"}),
    "reference": frozenset({"capture", "errors", "files"}),
    "detectors": frozenset({"config", "errors", "messages"}),
    "eventlog": frozenset({"errors", "messages", "request_context", "telemetry"}),
    # Alerting sits beside the event log: its incidents are stored there through a protocol,
    # never by importing it (the monitor joins the two).
    "alerts": frozenset({"config", "errors", "messages", "request_context", "telemetry"}),
    "ingress": frozenset({"errors", "files", "messages", "request_context", "telemetry"}),
    # The embedded reference carries the default detector's calibration.
    "models": frozenset({"_env", "config", "detectors", "files", "reference"}),
    # The request path: never the event store, the monitor or the tools.
    "replica": frozenset(
        {
            "capture",
            "config",
            "credentials",
            "messages",
            "reference",
            "request_context",
            "telemetry",
        }
    ),
    # The monitor feeds the alert pipeline and keeps its incidents in the event store.
    "monitor": frozenset(
        {
            "_env",
            "alerts",
            "config",
            "detectors",
            "errors",
            "eventlog",
            "messages",
            "reference",
            "replica",
            "telemetry",
        }
    ),
    # reference: a reference set is built for the model exactly as the app loads it
    # (apps.reference_build); errors: model loading's ServeDriftError.
    # alerts: the app mounts the maintenance handler behind its admin credential.
    "apps": frozenset(
        {
            "_env",
            "alerts",
            "config",
            "credentials",
            "errors",
            "eventlog",
            "ingress",
            "models",
            "monitor",
            "reference",
            "replica",
            "request_context",
            "telemetry",
        }
    ),
    # Shadow and canary: a router in front of two monitored apps (never the apps' code).
    "routing": frozenset(
        {
            "_env",
            "config",
            "credentials",
            "errors",
            "eventlog",
            "ingress",
            "monitor",
            "request_context",
            "telemetry",
        }
    ),
    "tools": frozenset(
        {
            "_env",
            "alerts",
            "apps",
            "config",
            "corruptions",
            "detectors",
            "errors",
            "eventlog",
            "files",
            "messages",
            "models",
            "monitor",
            "reference",
            "replica",
            "routing",
        }
    ),
}


def _stage(module: str) -> str:
    return module.split(".")[1]


def _module_name(path: Path) -> str:
    parts = ("serve_drift", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``serve_drift`` module ``path`` imports, lazily inside functions included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; import serve_drift.* absolutely")
        if isinstance(node, ast.ImportFrom) and node.module == "serve_drift":
            found |= {f"serve_drift.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("serve_drift."):
            found.add(str(node.module))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("serve_drift.")}
    return found


# Every module but the package root, which only re-exports (checked below).
STAGE_MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def _rank(stage: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if stage in layer)


def test_every_stage_is_in_one_layer_and_the_table_points_down() -> None:
    on_disk = {_stage(_module_name(p)) for p in STAGE_MODULES}
    assert on_disk == set(ALLOWED) == set().union(*LAYERS)
    for stage, allowed in ALLOWED.items():
        upward = {target for target in allowed if _rank(target) >= _rank(stage)}
        assert not upward, f"{stage} may not import {sorted(upward)}: not below it"


@pytest.mark.parametrize("path", STAGE_MODULES, ids=lambda p: _module_name(p))
def test_a_module_imports_only_what_its_stage_may(path: Path) -> None:
    stage = _stage(_module_name(path))
    crossing = {m for m in _imports(path) if _stage(m) != stage}
    refused = {m for m in crossing if _stage(m) not in ALLOWED[stage]}
    assert not refused, f"{_module_name(path)} ({stage}) imports {sorted(refused)}"


def test_the_package_root_only_re_exports() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        is_name = isinstance(node, ast.Assign) and all(
            isinstance(t, ast.Name) and t.id in {"__all__", "__version__"} for t in node.targets
        )
        assert isinstance(node, ast.ImportFrom) or is_docstring or is_name, ast.dump(node)[:80]


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: a replica module importing the event store is refused."""
    fake = tmp_path / "runtime.py"
    fake.write_text("from serve_drift.eventlog.store import EventStore\n")
    crossing = {_stage(m) for m in _imports(fake)}
    assert crossing == {"eventlog"} and not crossing <= ALLOWED["replica"]
