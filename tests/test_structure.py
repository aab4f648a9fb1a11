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
# A module's layer is its folder's (the first folder below proxy_jax/); a new file is placed by
# where it lives. Modules directly in proxy_jax/ are the command-line tools.
FOLDER_LAYERS = {
  # Base: errors, atomic files and digests, the disk, the console, device plumbing.
  "core": BASE,
  # Library: models, CAMs, augmentation, the proxy transform, images, pretrained weights.
  "models": LIBRARY,
  "cams": LIBRARY,
  "augment": LIBRARY,
  "proxy": LIBRARY,
  "images": LIBRARY,
  "weights": LIBRARY,
  # Run: the config boundary, data, and a training run (state, steps, loop, checkpoints...).
  "config": RUN,
  "data": RUN,
  "run": RUN,
  # Tools: sweeps and studies (and the command lines beside them).
  "sweep": TOOLS,
  "study": TOOLS,
}
MAX_TOP_LEVEL_MODULES = 10


def layer_of(name: str) -> str:
  """The layer of module `name` ("proxy_jax.run.train" -> run), from its folder."""
  parts = name.split(".")
  if len(parts) == 1:
    return BASE  # The package's own __init__.
  if len(parts) == 2 and parts[1] not in FOLDER_LAYERS:
    return TOOLS  # A module directly in proxy_jax/: a command line.
  if parts[1] not in FOLDER_LAYERS:
    raise KeyError(f"folder proxy_jax/{parts[1]}/ has no layer in FOLDER_LAYERS")
  return FOLDER_LAYERS[parts[1]]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  return [
    f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})"
    for name, targets in sorted(graph.items())
    for target in sorted(targets)
    if ORDER.index(layer_of(target)) > ORDER.index(layer_of(name))
  ]


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
        package = package[: len(package) - node.level + 1]
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
        return path[path.index(child) :] + [child]
      elif not state.get(child):
        state[child] = 1
        path.append(child)
        stack.append(iter(sorted(graph.get(child, ()))))
  return None


def test_every_folder_has_a_layer_and_the_top_level_is_small():
  folders = {path.parent.name for path in PACKAGE.rglob("*.py") if path.parent != PACKAGE}
  folders = {f for f in folders if (PACKAGE / f).is_dir()}
  assert folders <= set(FOLDER_LAYERS), (
    f"give {sorted(folders - set(FOLDER_LAYERS))} a layer in FOLDER_LAYERS"
  )
  top = sorted(p.stem for p in PACKAGE.glob("*.py"))
  assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} modules directly in proxy_jax/: {top}"
  for name in module_files():
    layer_of(name)


def test_layers_import_downwards_only():
  upward = upward_imports(import_graph())
  assert not upward, "layers import downwards only:\n  " + "\n  ".join(upward)


def test_the_layer_check_catches_an_upward_import(tmp_path):
  """A library module importing the run layer, in a package laid out as ours, is reported."""
  package = tmp_path / "proxy_jax"
  for folder in ("models", "run", "core"):
    (package / folder).mkdir(parents=True)
    (package / folder / "__init__.py").write_text("")
  (package / "__init__.py").write_text("")
  (package / "models" / "net.py").write_text("def f():\n  from proxy_jax.run import loop\n")
  (package / "run" / "loop.py").write_text("from proxy_jax.core import files\n")
  (package / "core" / "files.py").write_text("")
  (package / "main.py").write_text("from proxy_jax.run import loop\n")
  graph = import_graph(package)
  assert upward_imports(graph) == [
    "proxy_jax.models.net (library) imports proxy_jax.run.loop (run)"
  ]
  assert layer_of("proxy_jax.main") == TOOLS and layer_of("proxy_jax") == BASE


def test_no_import_circle():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_package_never_imports_the_checkout():
  # configs/, tests/ and benchmarks/ exist only in a checkout; the package must not need them.
  for name, path in module_files().items():
    for node in ast.walk(ast.parse(path.read_text())):
      names = (
        [a.name for a in node.names]
        if isinstance(node, ast.Import)
        else [node.module or ""]
        if isinstance(node, ast.ImportFrom) and not node.level
        else []
      )
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
  assert graph == {
    "pkg": set(),
    "pkg.a": {"pkg.sub.b"},
    "pkg.sub": {"pkg.sub.b"},
    "pkg.sub.b": {"pkg.sub", "pkg.a"},
  }
  cycle = find_cycle(graph)
  assert cycle[0] == cycle[-1] and set(cycle) in ({"pkg.a", "pkg.sub.b"}, {"pkg.sub", "pkg.sub.b"})
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
from proxy_jax.config import defaults as default_config
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
  (work / "base.py").write_text("from proxy_jax.config.defaults import get_config\n")
  (work / "study.py").write_text(_STUDY)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run(
    [sys.executable, "-c", _OUTSIDE],
    cwd=work,
    capture_output=True,
    text=True,
    timeout=120,
    env={**env, "PYTHONPATH": str(site)},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["module"] == str(site / "proxy_jax" / "config")
  assert report["default_path"] == str(site / "proxy_jax" / "config" / "defaults.py")
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


def test_the_step_factories_read_no_file():
  """The jitted steps and their factories take everything as arguments (the frozen saliency
  model is loaded once by the run's setup): the module imports nothing that reads a file."""
  readers = {
    "proxy_jax.run.restore",
    "proxy_jax.run.checkpoints",
    "proxy_jax.data",
    "proxy_jax.weights.pretrained",
    "proxy_jax.weights.weight_files",
  }
  graph = import_graph()
  reached, frontier = set(), ["proxy_jax.run.steps"]
  while frontier:
    for target in graph[frontier.pop()] - reached:
      reached.add(target)
      frontier.append(target)
  assert not reached & readers, sorted(reached & readers)


# The boundary: the one function below the tools that takes the ConfigDict and parses it.
CONFIG_BOUNDARY = {"proxy_jax.run.train": {"train_and_evaluate"}}
# What only code handling the raw ConfigDict does: mutate, copy or serialise it.
RAW_CONFIG_METHODS = {"unlocked", "lock", "copy_and_resolve_references", "to_yaml"}


def raw_config_reads(name: str, source: str) -> list[str]:
  """Where module `name` handles the raw config: an ml_collections import, a parameter named
  config or cfg (outside CONFIG_BOUNDARY), a ConfigDict method."""
  found = []
  allowed = CONFIG_BOUNDARY.get(name, set())
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
      if any(n.split(".")[0] == "ml_collections" for n in names):
        found.append(f"{name}:{node.lineno} imports ml_collections")
    elif (
      isinstance(node, (ast.FunctionDef, ast.Lambda)) and getattr(node, "name", "") not in allowed
    ):
      for arg in node.args.args + node.args.kwonlyargs:
        if arg.arg in ("config", "cfg"):
          found.append(f"{name}:{node.lineno} takes the raw config as {arg.arg!r}")
    elif isinstance(node, ast.Attribute) and node.attr in RAW_CONFIG_METHODS:
      found.append(f"{name}:{node.lineno} calls .{node.attr}()")
  return found


def test_below_the_boundary_nothing_reads_the_raw_config():
  """Library and run modules outside the config package take settings, never the ConfigDict."""
  found = []
  for name, path in module_files().items():
    if layer_of(name) in (LIBRARY, RUN) and not name.startswith("proxy_jax.config"):
      found += raw_config_reads(name, path.read_text())
  assert not found, "\n".join(found)


def test_the_raw_config_check_catches_a_read():
  source = "import ml_collections\ndef f(config):\n  with config.unlocked():\n    pass\n"
  assert len(raw_config_reads("proxy_jax.run.x", source)) == 3
  boundary = "def train_and_evaluate(config, workdir):\n  return config\n"
  assert raw_config_reads("proxy_jax.run.train", boundary) == []
