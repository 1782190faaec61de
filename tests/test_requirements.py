"""The serving requirements are exactly what the serving code imports, pinned as installed."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The MLflow pyfunc of a registered version runs where MLflow serves it, not in TorchServe:
# it may also import what the pinned mlflow installs (pandas), and never mlflow or train/.
MLFLOW_PYFUNC = REPO / "handler" / "mlflow_pyfunc.py"
SERVING_CODE = [
    *sorted(p for p in (REPO / "handler").glob("*.py") if p != MLFLOW_PYFUNC),
    REPO / "scripts" / "keykeeper.py", REPO / "scripts" / "manage_models.py",
]
LOCAL_MODULES = {"handler", "preprocess", "evidence", "manage_models", "watermark_handler"}  # the .mar and scripts/ import these flat


def pins(path: Path) -> dict[str, str]:
    """name -> version of the ``name==version`` lines of a requirements file (``-r`` followed)."""
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found.update(pins(path.parent / line[3:].strip()))
        elif line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            found[name.split("[", 1)[0].strip().lower()] = version.strip()  # psycopg[binary] -> psycopg
    return found


def third_party_imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in LOCAL_MODULES and m != "__future__"}


def test_serving_code_imports_only_serving_requirements():
    serving = pins(REPO / "requirements-serve.txt")
    providers = metadata.packages_distributions()
    for path in SERVING_CODE:
        for module in third_party_imports(path):
            dists = {d.lower() for d in providers.get(module, [])}
            assert dists & set(serving), f"{path.relative_to(REPO)} imports {module} ({dists}), not in requirements-serve.txt"


def test_mlflow_pyfunc_imports_serving_pins_and_what_mlflow_installs():
    serving = pins(REPO / "requirements-serve.txt")
    mlflow_deps = {re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0].lower() for r in metadata.requires("mlflow") or []}
    providers = metadata.packages_distributions()
    modules = third_party_imports(MLFLOW_PYFUNC)
    assert "mlflow" not in modules and "train" not in modules  # loaded by MLflow's loader_module hook alone
    for module in modules:
        dists = {d.lower() for d in providers.get(module, [])}
        assert dists & (set(serving) | mlflow_deps), f"handler/mlflow_pyfunc.py imports {module} ({dists}): neither pinned for serving nor installed by mlflow"


def test_pins_match_what_is_installed_and_are_not_repeated():
    serving = pins(REPO / "requirements-serve.txt")
    training_only = {
        name for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if (name := re.split(r"[=<>#\s]", line.strip(), maxsplit=1)[0].lower()) and not line.startswith(("#", "-r"))
    }
    assert not training_only & set(serving), "pinned twice: " + ", ".join(sorted(training_only & set(serving)))
    for name, version in pins(REPO / "requirements-dev.txt").items():
        assert metadata.version(name) == version, f"{name}: installed {metadata.version(name)}, pinned {version}"
