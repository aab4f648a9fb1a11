"""Slices of one machine for trials run side by side (`--parallel N`): cores or GPUs per trial.

On CPU each of the N slots holds a disjoint share of the cores this process may run on; a trial
is pinned to its share (`sched_setaffinity` in the child before it starts), and XLA sizes its
CPU thread pool from that affinity mask, as do the OpenMP/BLAS pools through the *_NUM_THREADS
variables set here to the same count. On GPUs, `devices_per_trial` K gives each slot K devices
of its own (`CUDA_VISIBLE_DEVICES`); with more slots than devices, K must be 1 and the slots share
the devices round-robin, each with an equal share of device memory
(`XLA_PYTHON_CLIENT_MEM_FRACTION`, JAX preallocating only that share).

The runner's process does not import JAX: the GPUs are counted from `CUDA_VISIBLE_DEVICES` or
`nvidia-smi -L`.
"""

import dataclasses
import os
import shutil
import subprocess

from proxy_jax.core import console, errors

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Share of a GPU's memory all the trials on it may take together (JAX's own default is 0.75).
GPU_MEMORY_SHARE = 0.9


@dataclasses.dataclass(frozen=True)
class Slot:
  """Where one trial runs: its cores (None: inherit this process's) and environment changes."""

  label: str
  cores: tuple[int, ...] | None = None
  env: dict = dataclasses.field(default_factory=dict)


def visible_gpus(environ=None) -> list[str]:
  """The GPU ids trials may use: CUDA_VISIBLE_DEVICES if set, else those nvidia-smi lists."""
  environ = os.environ if environ is None else environ
  listed = environ.get("CUDA_VISIBLE_DEVICES")
  if listed is not None:
    return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
  if shutil.which("nvidia-smi") is None:
    return []
  result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
  count = sum(line.startswith("GPU ") for line in result.stdout.splitlines())
  return [str(i) for i in range(count)]


def cpu_slots(parallel: int, cores: list[int]) -> list[Slot]:
  if parallel > len(cores):
    raise errors.UserError(
      f"--parallel={parallel}: only {len(cores)} CPU cores are available "
      f"({console.ranges(cores)}); each trial needs one of its own"
    )
  slots = []
  for index in range(parallel):
    # Shares that differ by one core at most when the count does not divide.
    share = tuple(cores[index * len(cores) // parallel : (index + 1) * len(cores) // parallel])
    env = {name: str(len(share)) for name in THREAD_VARIABLES}
    slots.append(Slot(f"cores {console.ranges(share)}", share, env))
  return slots


def gpu_slots(parallel: int, devices_per_trial: int, gpus: list[str]) -> list[Slot]:
  if not gpus:
    raise errors.UserError(f"--devices_per_trial={devices_per_trial}: no GPU is visible")
  if parallel * devices_per_trial <= len(gpus):
    return [
      Slot(f"GPU {','.join(share)}", None, {"CUDA_VISIBLE_DEVICES": ",".join(share)})
      for share in (
        gpus[i * devices_per_trial : (i + 1) * devices_per_trial] for i in range(parallel)
      )
    ]
  if devices_per_trial != 1:
    raise errors.UserError(
      f"--parallel={parallel} x --devices_per_trial={devices_per_trial} needs "
      f"{parallel * devices_per_trial} GPUs, {len(gpus)} are visible; trials share GPUs "
      "only with --devices_per_trial=1"
    )
  per_gpu = -(-parallel // len(gpus))
  fraction = f"{GPU_MEMORY_SHARE / per_gpu:.3f}"
  return [
    Slot(
      f"GPU {gpus[i % len(gpus)]} ({fraction} of its memory)",
      None,
      {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)], "XLA_PYTHON_CLIENT_MEM_FRACTION": fraction},
    )
    for i in range(parallel)
  ]


def plan_slots(
  parallel: int,
  devices_per_trial: int = 0,
  cores: list[int] | None = None,
  gpus: list[str] | None = None,
) -> list[Slot]:
  """The N slots of `--parallel N`: one slot that changes nothing for N = 1 (today's runner).

  `devices_per_trial` 0 means 1 where GPUs are visible and CPU cores otherwise.
  """
  if parallel < 1:
    raise errors.UserError(f"--parallel={parallel}: must be at least 1")
  if devices_per_trial < 0:
    raise errors.UserError(f"--devices_per_trial={devices_per_trial}: must be at least 0")
  if parallel == 1 and devices_per_trial == 0:
    return [Slot("this machine")]
  gpus = visible_gpus() if gpus is None else gpus
  if devices_per_trial or gpus:
    return gpu_slots(parallel, devices_per_trial or 1, gpus)
  cores = sorted(os.sched_getaffinity(0)) if cores is None else cores
  return cpu_slots(parallel, cores)
