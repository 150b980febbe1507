"""The layout's promise, checked against the real imports: each package imports only those below it.

``LAYERS`` is the one place the order is written (the README's Layout section describes it). A
package may import its own modules and those of any lower layer; packages of one layer do not
import each other; no production package imports ``tests`` or ``benchmarks``. Every import
statement counts, including those inside functions (deferred for speed, not for layering).
"""

import ast
import os
import subprocess
import sys

from core import paths

# Bottom to top.
LAYERS = (
    ("core",),  # names, the config schema, the dataset spec, storage, checks
    ("transform",),  # tf.Transform's preprocessing_fn, palette decoding
    ("trainer",),  # DeepLabV3+, the recipe, the SavedModel's signatures
    ("evaluation",),  # IoU, TFMA metrics, the EvalConfig, verdicts
    ("serving",),  # TF Serving's layout and warm-up, our gRPC/REST server, the client
    ("components", "datasets"),  # custom TFX components; dataset generators
    ("pipeline",),  # create_pipeline, the runners, the CLI
)
SUPPORT = ("tests", "benchmarks")
LEVEL = {package: level for level, group in enumerate(LAYERS) for package in group}


def production_files() -> dict:
    """``{path relative to the project: its package}`` of every module of a layered package."""
    found = {}
    for package in LEVEL:
        for folder, _, names in os.walk(os.path.join(paths.PROJECT_ROOT, package)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    found[os.path.relpath(path, paths.PROJECT_ROOT)] = package
    return found


def imported_packages(path: str) -> set:
    """``{(top-level package, line)}`` of every absolute import in ``path``."""
    with open(os.path.join(paths.PROJECT_ROOT, path)) as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def upward_imports() -> list:
    """``path:line imports X`` for each import that breaks ``LAYERS``."""
    broken = []
    for path, package in sorted(production_files().items()):
        for imported, line in sorted(imported_packages(path)):
            if imported == package or (imported not in LEVEL and imported not in SUPPORT):
                continue  # its own modules, or a third party's
            if imported in SUPPORT or LEVEL[imported] >= LEVEL[package]:
                broken.append(f"{path}:{line} ({package}) imports {imported}")
    return broken


def test_every_package_of_ours_has_its_layer():
    top_level = {
        d
        for d in os.listdir(paths.PROJECT_ROOT)
        if os.path.isfile(os.path.join(paths.PROJECT_ROOT, d, "__init__.py"))
    }
    assert top_level == set(LEVEL) | set(SUPPORT)


def test_imports_run_one_way_only():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a core module importing the trainer, inside a function, is reported."""
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "bad.py").write_text("def f():\n    from trainer import export\n")
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "ok.py").write_text(
        "import numpy\nfrom core import features\nfrom serving import layout\n"
    )
    monkeypatch.setattr(paths, "PROJECT_ROOT", str(tmp_path))
    assert upward_imports() == ["core/bad.py:2 (core) imports trainer"]


def test_importing_our_code_changes_nothing_in_the_process():
    """No import-time side effects: after importing every module below the roof, autograph's
    rules are still TensorFlow's, until the trainer asks (``trainer/autograph.py``); and importing
    the whole floor does not pull in TensorFlow Transform or TFX.

    ``pipeline/`` is left out: its Airflow DAG file builds the DAG when Airflow imports it, which
    is what such a file is for."""
    script = """
import importlib, pkgutil, sys
import core
for m in pkgutil.walk_packages(core.__path__, "core."):
    importlib.import_module(m.name)
floor = sorted(name for name in ("tensorflow_transform", "tfx") if name in sys.modules)
for package in ("transform", "trainer", "evaluation", "serving", "components", "datasets"):
    for m in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(m.name)
from trainer import autograph
before = autograph.keras_conversion_skipped()
autograph.skip_keras_conversion()
print(floor, before, autograph.keras_conversion_skipped())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=paths.PROJECT_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[-2] == "[] False True"
