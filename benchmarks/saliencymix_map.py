r"""SaliencyMix's map on real photos: the in-jit JAX transcription against OpenCV's
StaticSaliencyFineGrained (what the SaliencyMix reference calls), pixel by pixel, and their cost.

    python benchmarks/saliencymix_map.py [PHOTO_DIR] [--images=40] [--size=224] [--repeats=3]

PHOTO_DIR (default ../shared/data/imagenette-mini/val, relative to the working directory) is
searched recursively for .jpeg/.jpg/.png files; the first --images of them, sorted by path,
are resized (shorter side to --size, bilinear) and centre-cropped to --size x --size. Reported:
the share of pixels whose 8-bit level is identical, the largest level difference, how many
maps put their peak (the box centre SaliencyMix uses) on the same pixel, and the time per image
of OpenCV (a Python loop, one image at a time, as the reference) and of the jitted JAX batch
(compiled first; median of --repeats).
"""

import argparse
import os
import statistics
import sys
import time

import cv2
import jax
import numpy as np
from PIL import Image

# Runnable as `python benchmarks/<name>.py` from anywhere: the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from proxy_jax.augment import saliency  # pylint: disable=wrong-import-position

EXTENSIONS = (".jpeg", ".jpg", ".png")


def load_photos(folder: str, count: int, size: int) -> np.ndarray:
  """(N, size, size, 3) uint8 RGB: the first `count` photos under `folder`, centre crops."""
  paths = sorted(
    os.path.join(root, name)
    for root, _, names in os.walk(folder)
    for name in names
    if name.lower().endswith(EXTENSIONS)
  )[:count]
  if not paths:
    raise SystemExit(f"error: no photos (.jpeg/.jpg/.png) under {folder}")
  photos = []
  for path in paths:
    with Image.open(path) as image:
      image = image.convert("RGB")
      scale = size / min(image.size)
      width, height = (max(size, round(d * scale)) for d in image.size)
      image = image.resize((width, height), Image.BILINEAR)
      left, top = (width - size) // 2, (height - size) // 2
      photos.append(np.asarray(image.crop((left, top, left + size, top + size))))
  return np.stack(photos)


def opencv_maps(photos: np.ndarray) -> np.ndarray:
  detector = cv2.saliency.StaticSaliencyFineGrained_create()
  return np.stack([detector.computeSaliency(np.ascontiguousarray(p[..., ::-1]))[1] for p in photos])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("folder", nargs="?", default="../shared/data/imagenette-mini/val")
  parser.add_argument("--images", type=int, default=40)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  if not os.path.isdir(args.folder):
    raise SystemExit(f"error: {args.folder} is not a folder (pass the photo folder)")
  photos = load_photos(args.folder, args.images, args.size)
  inputs = photos.astype(np.float32) / 255.0
  fine_grained = jax.jit(saliency.fine_grained)
  ours = np.asarray(fine_grained(inputs))  # Also compiles.
  jax_times, cv_times = [], []
  for _ in range(args.repeats):
    start = time.perf_counter()
    fine_grained(inputs).block_until_ready()
    jax_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    reference = opencv_maps(photos)
    cv_times.append(time.perf_counter() - start)
  ours_levels = np.round(ours * 255).astype(int)
  reference_levels = np.round(reference * 255).astype(int)
  flat = lambda m: m.reshape(len(m), -1).argmax(1)  # pylint: disable=unnecessary-lambda-assignment
  same_peak = int(np.sum(flat(ours_levels) == flat(reference_levels)))
  print(
    f"{len(photos)} photos from {args.folder}, {args.size} x {args.size} px, "
    f"JAX on {jax.devices()[0].platform}"
  )
  print(
    f"identical 8-bit levels: {np.mean(ours_levels == reference_levels):.6%} of pixels; "
    f"largest difference {np.abs(ours_levels - reference_levels).max()} level(s); "
    f"same peak pixel in {same_peak} of {len(photos)} maps"
  )
  print(
    f"time per image: OpenCV {1e3 * statistics.median(cv_times) / len(photos):.2f} ms "
    f"(Python loop), JAX {1e3 * statistics.median(jax_times) / len(photos):.2f} ms "
    f"(jitted batch of {len(photos)}); medians of {args.repeats}"
  )


if __name__ == "__main__":
  main()
