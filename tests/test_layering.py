"""The layout's promise, checked against the real imports: each package imports only those below it.

``LAYERS`` is the one place the order is written (the README's Layout section describes it). A
package may import its own modules and those of any lower layer; packages of one layer do not
import each other; no production package imports ``tests`` or ``benchmarks``. Every import
statement counts, including those inside functions (deferred for speed, not for layering).
"""

import ast
import os

from core import paths

# Bottom to top.
LAYERS = (
    ("core",),  # names, the config schema, the dataset spec, storage, checks
    ("transform",),  # tf.Transform's preprocessing_fn, palette decoding
    ("trainer",),  # DeepLabV3+, the recipe, the SavedModel's signatures
    ("evaluation",),  # IoU, TFMA metrics, the EvalConfig, verdicts
    ("serving",),  # TF Serving's layout and warm-up, our gRPC/REST server, the client
    ("inference",),  # batch inference: the Beam job of `deeplab-tfx infer` and SegmentationInferrer
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


# The module-level ``if``s that run nothing on import.
GUARDS = {
    ast.dump(ast.parse(test, mode="eval").body) for test in ('__name__ == "__main__"', "typing.TYPE_CHECKING")
}


def import_time_effects(path: str) -> list:
    """``path:line code`` of each statement that runs when the module is imported and could change
    something outside it: anything at module level but imports, definitions, docstrings,
    assignments to the module's own names and the ``__main__``/``TYPE_CHECKING`` guards. A call
    assigned to a name (``_log = logging.getLogger(...)``) is the module's own state."""
    with open(os.path.join(paths.PROJECT_ROOT, path)) as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in tree.body:
        if isinstance(
            node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        ):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n for t in targets for n in (t.elts if isinstance(t, ast.Tuple) else [t])]
            if all(isinstance(n, ast.Name) for n in names):
                continue
        if isinstance(node, ast.If) and ast.dump(node.test) in GUARDS:
            continue
        found.append(f"{path}:{node.lineno} {ast.unparse(node).splitlines()[0]}")
    return found


def test_importing_our_code_changes_nothing_outside_it():
    """No import-time side effects: no module sets another's attribute (autograph's conversion
    rules, once set by ``trainer/__init__.py``), calls a global switch (``matplotlib.use``) or
    runs code in an ``if`` at module level. ``trainer/autograph.py`` is called where the Trainer
    starts instead; that importing the trainer leaves autograph alone and ``train`` switches it is
    checked in a fresh process by ``test_killed_training_resumes_from_its_backup``."""
    assert [effect for path in sorted(production_files()) for effect in import_time_effects(path)] == []


def test_the_check_sees_an_import_time_effect(tmp_path, monkeypatch):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text(
        '"""Doc."""\nimport x\nRULES = x.rules()\nif not x.ok:\n    x.config.RULES = ()\nx.use("Agg")\n'
    )
    monkeypatch.setattr(paths, "PROJECT_ROOT", str(tmp_path))
    assert import_time_effects("trainer/__init__.py") == [
        "trainer/__init__.py:4 if not x.ok:",
        "trainer/__init__.py:6 x.use('Agg')",
    ]


# Importing ``tfx.v1`` imports its Google Cloud extensions (``google.cloud.aiplatform``): about 8 s
# of every process that builds the pipeline, measured with ``python -X importtime``. Production
# modules import TFX's own modules instead, and the extensions only where Vertex training is set.
SLOW_IMPORTS = ("tfx.v1",)


def slow_module_level_imports(path: str) -> list:
    """``path:line module`` of each module-level import of ``SLOW_IMPORTS`` (or below them)."""
    with open(os.path.join(paths.PROJECT_ROOT, path)) as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [
            f"{path}:{node.lineno} {name}"
            for name in names
            if any(name == slow or name.startswith(slow + ".") for slow in SLOW_IMPORTS)
        ]  # fmt: skip
    return found


def test_no_module_imports_what_slows_every_start():
    assert [hit for path in sorted(production_files()) for hit in slow_module_level_imports(path)] == []


def test_the_check_sees_a_slow_import(tmp_path, monkeypatch):
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "p.py").write_text(
        "from tfx import v1 as tfx\nimport tfx.v1.dsl\nfrom tfx.components import Trainer\n"
        "def f():\n    from tfx.v1.extensions import google_cloud_ai_platform\n"
    )
    monkeypatch.setattr(paths, "PROJECT_ROOT", str(tmp_path))
    assert slow_module_level_imports("pipeline/p.py") == [
        "pipeline/p.py:1 tfx.v1",
        "pipeline/p.py:2 tfx.v1.dsl",
    ]
