"""What a training process sets up once, before it compiles anything: JAX's persistent
compilation cache and, for a multi-host run, the distributed runtime."""

import os

import jax


def setup(settings) -> None:
  if settings.compilation_cache_dir:
    use_compilation_cache(settings.compilation_cache_dir)
  if settings.distributed:
    jax.distributed.initialize()


def use_compilation_cache(folder: str) -> None:
  """JAX's persistent compilation cache in `folder`, for every program however quick to compile.

  JAX decides whether a process uses the cache at its first compilation, so this runs before
  any; a process that compiled already (a test session) resets that decision. A cache named by
  JAX_COMPILATION_CACHE_DIR (the user's, or a study's for its trials) is left in charge.
  """
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  folder = os.path.expanduser(folder)
  if jax.config.jax_compilation_cache_dir == folder:
    return
  compilation_cache.set_cache_dir(folder)
  # A trial's programs each compile in well under JAX's default threshold of 1 s on a CPU,
  # yet together they are most of its start-up.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.reset_cache()
