"""Where a short trial's wall time goes: start-up, data, setup, compile, training, evaluation,
proxy steps, checkpoints and exit, one `main.py` process per trial, medians over rounds.

  python benchmarks/trial_overhead.py                          # digits, this checkout
  python benchmarks/trial_overhead.py --compare=204b44b        # before/after, alternating
  python benchmarks/trial_overhead.py --data=imagenette-mini --imagenette=../shared/data/imagenette-mini

Each trial is a fresh process in a fresh workdir with warm caches: one untimed trial per version
first fills the decoded-image cache (shared by the trials through config.data.cache_dir) and,
where the version has one, the compilation cache. `--compare=REV` also times the code of git
revision REV (extracted to a temporary folder); the versions alternate within each round, so a
busy machine slows both alike.

The phases are measured inside the trial process, by name, so that older code needs no hooks:
the tool wraps `train._setup_host` or `host.setup` (start-up, with the imports before it), `data.load_dataset`,
`train._build` and `reporting.write_run_header` (setup), `train._train` (training: what the loop
spends outside the phases nested in it), `train.evaluate`, `proxy_step.run_proxy_step`, the methods
of `checkpoints.RunCheckpoints`, and `train._shut_down` plus the time from the return of
`train_and_evaluate` to the end of the process (exit). Compile time comes from JAX's own
duration events (tracing, lowering, backend compile or cache read) and is taken out of the
phase it happened in. "fixed" is everything but training, evaluation and proxy steps.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = (
  "start-up",
  "data",
  "setup",
  "compile",
  "training",
  "evaluation",
  "proxy steps",
  "checkpoints",
  "exit",
  "other",
)
VARIABLE = ("training", "evaluation", "proxy steps")

# Runs inside the trial process: argv = [tree, result path, spawn time, main.py arguments...].
DRIVER = r'''
import json, os, sys, time
tree, result_path, spawned = sys.argv[1], sys.argv[2], float(sys.argv[3])
sys.argv = [os.path.join(tree, "main.py")] + sys.argv[4:]
sys.path.insert(0, tree)
import jax
from jax import monitoring
import importlib
from proxy_jax import data
from proxy_jax.run import checkpoints, proxy_step, reporting, train

seconds = {}
stack = ["start-up"]
marks = [spawned]

def switch(push=None):
  now = time.time()
  seconds[stack[-1]] = seconds.get(stack[-1], 0.0) + now - marks[0]
  marks[0] = now
  if push is None:
    stack.pop()
  else:
    stack.append(push)

def timed(phase, function):
  def wrapper(*args, **kwargs):
    switch(phase)
    try:
      return function(*args, **kwargs)
    finally:
      switch()
  return wrapper

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")

def on_duration(event, duration, **kwargs):
  if event in COMPILE_EVENTS:
    seconds["compile"] = seconds.get("compile", 0.0) + duration
    seconds[stack[-1]] = seconds.get(stack[-1], 0.0) - duration

monitoring.register_event_duration_secs_listener(on_duration)
def optional_module(name):
  try:
    return importlib.import_module(name)
  except ImportError:
    return None

host = optional_module("proxy_jax.run.host")  # Newer code: the host setup moved out of train.
for module, name, phase in [(train, "_setup_host", "start-up"), (host, "setup", "start-up"),
                            (data, "load_dataset", "data"), (train, "_build", "setup"),
                            (reporting, "write_run_header", "setup"),
                            (train, "_train", "training"), (train, "evaluate", "evaluation"),
                            (proxy, "run_proxy_step", "proxy steps"),
                            (train, "_shut_down", "exit")]:
  if hasattr(module, name):  # Code of another version may lack one.
    setattr(module, name, timed(phase, getattr(module, name)))
for name in ("__init__", "save", "wait", "close", "restore", "latest_epoch"):
  if hasattr(checkpoints.RunCheckpoints, name):
    setattr(checkpoints.RunCheckpoints, name,
            timed("checkpoints", getattr(checkpoints.RunCheckpoints, name)))
run = train.train_and_evaluate

def train_and_evaluate(*args, **kwargs):
  switch("other")
  stack[:] = ["other"]
  result = run(*args, **kwargs)
  switch("exit")
  with open(result_path, "w") as f:
    json.dump({"seconds": seconds, "returned": time.time()}, f)
  return result

train.train_and_evaluate = train_and_evaluate
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def trial_args(dataset: str, imagenette: str, epochs: int, cache_dir: str) -> list[str]:
  """main.py arguments of a short trial: two epochs with a proxy step between them."""
  common = [
    f"--config.num_epochs={epochs}",
    f"--config.proxy.schedule=1,p,{epochs - 1}",
    f"--config.data.cache_dir={cache_dir}",
  ]
  if dataset == "digits":
    return ["--config=configs/default.py"] + common
  return [
    "--config=configs/folder.py",
    f"--config.data.path={imagenette}/train",
    f"--config.data.test_path={imagenette}/val",
    "--config.data.name=imagenette_mini",
    "--config.image_size=32",
    "--config.batch_size=64",
  ] + common


def run_trial(tree: str, args: list[str], workdir: str) -> dict:
  """{phase: seconds} of one trial of the code in `tree`."""
  result_path = workdir + ".json"
  spawned = time.time()
  process = subprocess.run(
    [sys.executable, "-c", DRIVER, tree, result_path, repr(spawned), *args, f"--workdir={workdir}"],
    cwd=tree,
    capture_output=True,
    text=True,
    check=False,
  )
  ended = time.time()
  if process.returncode:
    raise RuntimeError(f"trial in {tree} failed:\n{process.stderr[-3000:]}")
  with open(result_path) as f:
    measured = json.load(f)
  seconds = measured["seconds"]
  seconds["exit"] = seconds.get("exit", 0.0) + ended - measured["returned"]
  seconds["total"] = ended - spawned
  seconds["fixed"] = seconds["total"] - sum(seconds.get(p, 0.0) for p in VARIABLE)
  return seconds


def extract(revision: str, folder: str) -> str:
  """The tracked files of `revision` in `folder` (git archive), for timing old code."""
  archive = subprocess.run(
    ["git", "-C", ROOT, "archive", revision], capture_output=True, check=True
  ).stdout
  subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
  return folder


def table(results: dict[str, list[dict]]) -> str:
  names = list(results)
  lines = ["| phase (s, median) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
  for phase in PHASES + ("fixed", "total"):
    cells = [statistics.median(r.get(phase, 0.0) for r in results[n]) for n in names]
    lines.append(f"| {phase} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", choices=("digits", "imagenette-mini"), default="digits")
  parser.add_argument(
    "--imagenette", default=os.path.join(ROOT, "..", "shared", "data", "imagenette-mini")
  )
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument(
    "--compare",
    default="",
    help="git revision (or folder of a checkout) to time beside this checkout",
  )
  options = parser.parse_args()
  with tempfile.TemporaryDirectory() as scratch:
    trees = {"this checkout": ROOT}
    if os.path.isdir(options.compare):
      trees[options.compare] = os.path.abspath(options.compare)
    elif options.compare:
      os.makedirs(os.path.join(scratch, "before"))
      trees[options.compare] = extract(options.compare, os.path.join(scratch, "before"))
    args = trial_args(
      options.data,
      os.path.abspath(options.imagenette),
      options.epochs,
      os.path.join(scratch, "cache"),
    )
    results = {name: [] for name in trees}
    for round_index in range(-1, options.rounds):  # Round -1 warms the caches, untimed.
      for name, tree in trees.items():
        workdir = os.path.join(scratch, f"{len(results[name])}-{round_index}-{abs(hash(name))}")
        seconds = run_trial(tree, args, workdir)
        if round_index >= 0:
          results[name].append(seconds)
        print(
          f"round {round_index} {name}: total {seconds['total']:.1f} s, "
          f"fixed {seconds['fixed']:.1f} s",
          file=sys.stderr,
          flush=True,
        )
  print(f"{options.data}, {options.epochs} epochs, {options.rounds} rounds")
  print(table(results))


if __name__ == "__main__":
  main()
