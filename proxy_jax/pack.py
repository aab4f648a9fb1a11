"""Packs an image folder into ArrayRecord shards for the stream pipeline, ahead of a run.

  python -m proxy_jax.pack --images=photos/train --out=packs/train [--label_regex=REGEX]
  python main.py --config=configs/folder.py --config.data.path=packs/train \
      --config.data.pipeline=stream

A run with `data.pipeline=stream` packs its folder by itself on first use (into its cache
folder); packing ahead puts the pack where you choose (fast local storage, or once before
copying it to the machines that train), and `data.path` may then name the pack itself. The
folder is listed and labelled as a run reads it (class subfolders, or `--label_regex` for a flat
folder); each file that does not decode is skipped and named, with its reason, as the run's
folder loader reports it.
"""

import os

from absl import flags

from proxy_jax import cli
from proxy_jax.core import errors
from proxy_jax.data import packed


def define_flags():
  flags.DEFINE_string("images", None, "The image folder (class subfolders).", required=True)
  flags.DEFINE_string("out", None, "The pack's folder (created).", required=True)
  flags.DEFINE_string("label_regex", "", "For a flat folder: the label is the first group.")
  flags.DEFINE_integer("workers", 8, "Threads that check the files decode.")


def main(argv):
  del argv
  if not os.path.isdir(flags.FLAGS.images):
    raise errors.MissingPathError(f"--images: {flags.FLAGS.images!r} is not a directory")
  index = packed.pack_folder(
    flags.FLAGS.images, flags.FLAGS.out, flags.FLAGS.label_regex, flags.FLAGS.workers
  )
  for entry in index["skipped"]:
    print(f"skipped {entry['path']}: {entry['reason']}")
  print(
    f"packed {len(index['names'])} images of {len(index['class_names'])} classes into "
    f"{len(index['shards'])} shard(s) in {flags.FLAGS.out}"
    + (f"; {len(index['skipped'])} file(s) skipped" if index["skipped"] else "")
  )


if __name__ == "__main__":
  cli.run(main, define_flags)
