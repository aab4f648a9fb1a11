"""The README's commands work as written: every `python ...` line of its code blocks names a
program that exists and flags that program defines, with files that exist; the cheap ones run.

Each command's flags are parsed by the program's own flag definitions in a fresh process (absl
programs) or by its own parser (argparse ones), without running it: that catches a renamed
flag, a misspelt config field (`--config.x.y=` is checked against the config file) and a moved
module. Training commands cost minutes; their end-to-end runs are other tests'.
"""

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT

README = os.path.join(ROOT, "README.md")
# Programs whose flags are absl flags defined by `define_flags()` (main.py's are the trainer's).
ABSL = {
  "main.py": "proxy_jax.main",
  "proxy_jax.main": "proxy_jax.main",
  "proxy_jax.infer": "proxy_jax.infer",
  "proxy_jax.faithfulness": "proxy_jax.faithfulness",
  "proxy_jax.sweep": "proxy_jax.sweep.__main__",
  "proxy_jax.study": "proxy_jax.study.__main__",
  "proxy_jax.batch_size": "proxy_jax.batch_size",
  "proxy_jax.aggregate": "proxy_jax.aggregate",
  "proxy_jax.pack": "proxy_jax.pack",
}
ARGPARSE = {"proxy_jax.convert"}
PARSE = """
import sys
from absl import flags
import importlib
from proxy_jax import cli
module = importlib.import_module(sys.argv[1])
module.define_flags()
cli.hyphen_flags_parser(["program"] + sys.argv[2:])  # --top-k is --top_k, as the tools take it.
print("parsed")
"""


def readme_commands() -> list[list[str]]:
  """Every `python ...` command of the README's code blocks (comments dropped), as argv."""
  text = open(README, encoding="utf-8").read()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.splitlines():
      line = line.split("  #")[0].strip()
      if line.startswith("python ") and "pytest" not in line:
        commands.append(shlex.split(line))
  return commands


def program(argv: list[str]) -> str:
  return argv[2] if argv[1] == "-m" else argv[1]


def flags_of(argv: list[str]) -> list[str]:
  return argv[3:] if argv[1] == "-m" else argv[2:]


def test_the_readme_has_commands_of_every_kind():
  programs = {program(argv) for argv in readme_commands()}
  assert {"main.py", "proxy_jax.infer", "proxy_jax.study", "proxy_jax.sweep"} <= programs
  assert programs <= set(ABSL) | ARGPARSE, programs - set(ABSL) - ARGPARSE


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda argv: " ".join(argv[1:4]))
def test_a_readme_command_names_files_that_exist(argv):
  for argument in flags_of(argv):
    name, _, value = argument.partition("=")
    if name in ("--config", "--sweep", "--study"):
      assert os.path.isfile(os.path.join(ROOT, value.partition(":")[0])), argument
  if program(argv) == "main.py":
    assert os.path.isfile(os.path.join(ROOT, "main.py"))


@pytest.mark.slow
@pytest.mark.parametrize(
  "argv", [a for a in readme_commands() if program(a) in ABSL], ids=lambda argv: " ".join(argv[1:4])
)
def test_a_readme_command_parses_with_its_programs_flags(argv):
  result = subprocess.run(
    [sys.executable, "-c", PARSE, ABSL[program(argv)], *flags_of(argv)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert result.returncode == 0 and result.stdout.strip() == "parsed", result.stderr[-2000:]


@pytest.mark.parametrize(
  "argv",
  [a for a in readme_commands() if program(a) in ARGPARSE],
  ids=lambda argv: " ".join(argv[1:4]),
)
def test_a_readme_command_parses_with_its_argparse_parser(argv):
  import importlib  # pylint: disable=g-import-not-at-top

  module = importlib.import_module(program(argv))
  args = module.parse_args(flags_of(argv))
  assert args is not None


@pytest.mark.slow
def test_the_cheap_readme_commands_run(tmp_path):
  """A study's and a sweep's --dry-run list their trials; nothing trains."""
  cheap = [a for a in readme_commands() if program(a) in ("proxy_jax.study", "proxy_jax.sweep")]
  assert cheap
  for argv in cheap:
    args = [
      f"--workdir={tmp_path / program(argv)}" if a.startswith("--workdir=") else a
      for a in flags_of(argv)
    ]
    result = subprocess.run(
      [sys.executable, "-m", program(argv), *args, "--dry-run"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
      env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert " trials" in result.stdout and "  run " in result.stdout
