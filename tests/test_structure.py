"""The package's shape: layers import downwards only, no import circle, short files and functions,
and an installed copy that works outside the checkout.

Every import of every module is read from its source (function-level ones included), so an
import hidden inside a function to dodge a circle fails here as well as one at the top.
"""

import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

from tests.conftest import ROOT

PACKAGE = pathlib.Path(ROOT) / "proxy_jax"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60

BASE, LIBRARY, RUN, TOOLS = "base", "library", "run", "tools"
# A module may import modules of its own layer or of the layers before it in this order.
ORDER = (BASE, LIBRARY, RUN, TOOLS)
LAYERS = {
    # Base: errors, files, field paths and device plumbing that every layer uses.
    "proxy_jax": BASE,
    "proxy_jax.errors": BASE,
    "proxy_jax.io_utils": BASE,
    "proxy_jax.digests": BASE,
    "proxy_jax.disk": BASE,
    "proxy_jax.config_files": BASE,
    "proxy_jax.config_fields": BASE,
    "proxy_jax.console": BASE,
    "proxy_jax.default_config": BASE,
    "proxy_jax.parallel": BASE,
    "proxy_jax.images_grid": BASE,
    # Library: models, CAMs, augmentation, the proxy transform, preprocessing, weights.
    "proxy_jax.models": LIBRARY,
    "proxy_jax.models.common": LIBRARY,
    "proxy_jax.models.resnet": LIBRARY,
    "proxy_jax.models.tiny": LIBRARY,
    "proxy_jax.models.vgg": LIBRARY,
    "proxy_jax.models.vit": LIBRARY,
    "proxy_jax.models.efficientnet": LIBRARY,
    "proxy_jax.cams": LIBRARY,
    "proxy_jax.cams.chunking": LIBRARY,
    "proxy_jax.cams.formulas": LIBRARY,
    "proxy_jax.cams.pixel": LIBRARY,
    "proxy_jax.cams.postprocess": LIBRARY,
    "proxy_jax.cams.render": LIBRARY,
    "proxy_jax.augment": LIBRARY,
    "proxy_jax.augment.crop": LIBRARY,
    "proxy_jax.augment.erase": LIBRARY,
    "proxy_jax.augment.fields": LIBRARY,
    "proxy_jax.augment.fine_grained": LIBRARY,
    "proxy_jax.augment.geometry": LIBRARY,
    "proxy_jax.augment.keep": LIBRARY,
    "proxy_jax.augment.mix": LIBRARY,
    "proxy_jax.augment.ops": LIBRARY,
    "proxy_jax.augment.paper_settings": LIBRARY,
    "proxy_jax.augment.policy": LIBRARY,
    "proxy_jax.augment.saliency": LIBRARY,
    "proxy_jax.preprocess": LIBRARY,
    "proxy_jax.proxy_image": LIBRARY,
    "proxy_jax.pretrained": LIBRARY,
    "proxy_jax.weight_files": LIBRARY,
    "proxy_jax.torch_pickle": LIBRARY,
    # Run: data, state, steps, the loop, checkpoints, records, reporting, validation.
    "proxy_jax.data": RUN,
    "proxy_jax.chunked": RUN,
    "proxy_jax.proxy": RUN,
    "proxy_jax.splits": RUN,
    "proxy_jax.tfds_prepare": RUN,
    "proxy_jax.model_state": RUN,
    "proxy_jax.restore": RUN,
    "proxy_jax.step_metrics": RUN,
    "proxy_jax.host": RUN,
    "proxy_jax.summaries": RUN,
    "proxy_jax.checkpoints": RUN,
    "proxy_jax.records": RUN,
    "proxy_jax.reporting": RUN,
    "proxy_jax.config_lib": RUN,
    "proxy_jax.batch_finder": RUN,
    "proxy_jax.steps": RUN,
    "proxy_jax.train": RUN,
    "proxy_jax.workdir_lock": RUN,
    # Tools: the command lines and what only they use.
    "proxy_jax.cli": TOOLS,
    "proxy_jax.main": TOOLS,
    "proxy_jax.infer": TOOLS,
    "proxy_jax.faithfulness": TOOLS,
    "proxy_jax.aggregate": TOOLS,
    "proxy_jax.batch_size": TOOLS,
    "proxy_jax.convert": TOOLS,
    "proxy_jax.sweep": TOOLS,
    "proxy_jax.sweep.__main__": TOOLS,
    "proxy_jax.sweep.carry": TOOLS,
    "proxy_jax.sweep.files": TOOLS,
    "proxy_jax.sweep.grid": TOOLS,
    "proxy_jax.sweep.journal": TOOLS,
    "proxy_jax.sweep.runner": TOOLS,
    "proxy_jax.sweep.slots": TOOLS,
    "proxy_jax.study": TOOLS,
    "proxy_jax.study.__main__": TOOLS,
    "proxy_jax.study.arms": TOOLS,
    "proxy_jax.study.explanations": TOOLS,
    "proxy_jax.study.pilot": TOOLS,
    "proxy_jax.study.preregistration": TOOLS,
    "proxy_jax.study.power": TOOLS,
    "proxy_jax.study.manipulation": TOOLS,
    "proxy_jax.study.backfill": TOOLS,
    "proxy_jax.study.report": TOOLS,
    "proxy_jax.study.runs": TOOLS,
    "proxy_jax.study.reuse": TOOLS,
    "proxy_jax.study.settings_table": TOOLS,
    "proxy_jax.study.spec": TOOLS,
    "proxy_jax.study.stats": TOOLS,
}


def module_files(package: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
  """Dotted module name -> source file; a package is named by its __init__.py."""
  modules = {}
  for path in sorted(package.rglob("*.py")):
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    modules[".".join(parts)] = path
  return modules


def imported_modules(name: str, path: pathlib.Path, known) -> set[str]:
  """The project modules `name` imports anywhere in its file (functions included).

  `from a import b` is module a.b when that is a module, else package a (whose __init__ runs);
  relative imports are resolved against the module's package.
  """
  is_package = path.name == "__init__.py"
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      candidates = [[alias.name] for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
      candidates = [[f"{base}.{alias.name}", base] for alias in node.names]
    else:
      continue
    for options in candidates:
      for option in options:
        # `import a.b.c` binds a and runs a.b.c: the deepest module named is the edge.
        while option and option not in known and "." in option:
          option = option.rsplit(".", 1)[0]
        if option in known:
          if option != name:
            found.add(option)
          break
  return found


def import_graph(package: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
  files = module_files(package)
  return {name: imported_modules(name, path, files) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import circle as [a, b, ..., a], or None (iterative depth-first search)."""
  state = {}  # 1: on the current path, 2: done.
  for root in sorted(graph):
    if state.get(root):
      continue
    path, stack = [root], [iter(sorted(graph[root]))]
    state[root] = 1
    while stack:
      child = next(stack[-1], None)
      if child is None:
        state[path.pop()] = 2
        stack.pop()
      elif state.get(child) == 1:
        return path[path.index(child):] + [child]
      elif not state.get(child):
        state[child] = 1
        path.append(child)
        stack.append(iter(sorted(graph.get(child, ()))))
  return None


def test_every_module_is_classified_in_a_layer():
  modules = set(module_files())
  missing = sorted(modules - set(LAYERS))
  assert not missing, (f"classify {missing} in tests/test_structure.py LAYERS (base, library, "
                       "run or tools) so the layer contract covers them")
  stale = sorted(set(LAYERS) - modules)
  assert not stale, f"LAYERS names modules that no longer exist: {stale}"


def test_layers_import_downwards_only():
  graph = import_graph()
  upward = [f"{name} ({LAYERS[name]}) imports {target} ({LAYERS[target]})"
            for name, targets in sorted(graph.items()) if name in LAYERS
            for target in sorted(targets) if target in LAYERS
            if ORDER.index(LAYERS[target]) > ORDER.index(LAYERS[name])]
  assert not upward, "layers import downwards only:\n  " + "\n  ".join(upward)


def test_no_import_circle():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_package_never_imports_the_checkout():
  # configs/, tests/ and benchmarks/ exist only in a checkout; the package must not need them.
  for name, path in module_files().items():
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
      roots = {n.split(".")[0] for n in names}
      assert not roots & {"configs", "tests", "benchmarks", "main"}, (name, names)


def test_the_checks_catch_what_they_guard(tmp_path):
  """The graph reader sees function-level, relative and package imports; the cycle finder finds
  a circle through a package __init__."""
  package = tmp_path / "pkg"
  (package / "sub").mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "a.py").write_text("def f():\n  from pkg.sub import b\n")
  (package / "sub" / "__init__.py").write_text("from . import b\n")
  (package / "sub" / "b.py").write_text("from pkg import sub\nimport pkg.a\n")
  graph = import_graph(package)
  assert graph == {"pkg": set(), "pkg.a": {"pkg.sub.b"}, "pkg.sub": {"pkg.sub.b"},
                   "pkg.sub.b": {"pkg.sub", "pkg.a"}}
  cycle = find_cycle(graph)
  assert cycle[0] == cycle[-1] and set(cycle) in ({"pkg.a", "pkg.sub.b"},
                                                  {"pkg.sub", "pkg.sub.b"})
  assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_files_and_functions_are_short():
  long_files, long_functions = [], []
  for name, path in module_files().items():
    text = path.read_text()
    if len(text.splitlines()) > MAX_FILE_LINES:
      long_files.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
          long_functions.append(f"{name}.{node.name} (line {node.lineno}): {lines} lines")
  assert not long_files, f"files over {MAX_FILE_LINES} lines: {long_files}"
  assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


# ---------------------------------------------------------------- installed outside a checkout

_OUTSIDE = """
import json, os, sys
from proxy_jax import default_config
from proxy_jax.study import spec
from proxy_jax.sweep import runner
config = default_config.get_config()
study = spec.load_study("study.py")
command = runner.trial_command({"name": "t", "overrides": {"seed": 1}}, study.config, "w",
                               sys.executable, "", {})
print(json.dumps({"module": os.path.dirname(default_config.__file__),
                  "default_path": default_config.PATH, "epochs": config.num_epochs,
                  "study_config": study.config, "command": command[1:3],
                  "checkout": [m for m in sys.modules if m.split(".")[0] in ("configs", "tests")]}))
"""

_STUDY = """
from proxy_jax.study.spec import Study

def get_study():
  return Study(name="outside", config="base.py", seeds=(0, 1),
               arms={"baseline": {}, "proxy": {"proxy.enabled": True}})
"""


def test_an_installed_copy_works_outside_the_checkout(tmp_path):
  """A copy of the package alone (no configs/, no main.py beside it) loads its default config,
  resolves a study against the working directory and launches trials as `-m proxy_jax.main`."""
  site, work = tmp_path / "site", tmp_path / "work"
  shutil.copytree(PACKAGE, site / "proxy_jax", ignore=shutil.ignore_patterns("__pycache__"))
  work.mkdir()
  (work / "base.py").write_text("from proxy_jax.default_config import get_config\n")
  (work / "study.py").write_text(_STUDY)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", _OUTSIDE], cwd=work, capture_output=True,
                          text=True, timeout=120, env={**env, "PYTHONPATH": str(site)})
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["module"] == str(site / "proxy_jax")
  assert report["default_path"] == str(site / "proxy_jax" / "default_config.py")
  assert report["epochs"] > 0
  assert report["study_config"] == str(work / "base.py")
  assert report["command"] == ["-m", "proxy_jax.main"]
  assert report["checkout"] == []


def test_pyproject_installs_every_package():
  """`pip install .` ships every subpackage: setuptools' package search over pyproject's
  include patterns finds each folder of proxy_jax that holds modules."""
  import setuptools  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)
  include = project["tool"]["setuptools"]["packages"]["find"]["include"]
  found = set(setuptools.find_packages(ROOT, include=include))
  folders = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("*.py")}
  assert found == folders
