"""The command-line convention of every `python -m proxy_jax.<tool>`: absl flags, run by `run`.

Flags are spelled with hyphens or underscores (`--top-k=3` is `--top_k=3`); `--config.*`
overrides of ml_collections are passed through untouched. `main.py` keeps absl's own parser,
as flax's examples do.
"""

from typing import Callable

from absl import flags

from proxy_jax import errors


def hyphen_flags_parser(argv: list[str]):
  """absl flags with --dry-run spelled as well as --dry_run."""
  fixed = []
  for arg in argv:
    if arg.startswith("--") and not arg.startswith("--config."):
      name, sep, value = arg[2:].partition("=")
      arg = "--" + name.replace("-", "_") + sep + value
    fixed.append(arg)
  return flags.FLAGS(fixed)


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None],
        config_default: str | None = None) -> None:
  """Defines a tool's flags (only when it is the program, never at import) and runs `main`.

  A user error (`errors.UserError`, a bad flag) ends as one `error: ...` line with status 2;
  `config_default` is the default of the tool's `--config` flag, if it has one.
  """
  define_flags()
  errors.run_main(main, flags_parser=hyphen_flags_parser, config_default=config_default)
