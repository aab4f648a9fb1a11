r"""The train step's resized crop against PIL crop + bilinear resize, on photo-like images.

    python benchmarks/crop_vs_pil.py [--stored=256] [--size=224] [--images=16] [--boxes=8]
        [--folder=../shared/data/imagenette-mini/train]

For each image (synthetic photo-like ones: smooth shading, hard-edged shapes, fine texture and
noise; plus up to --images real photos from --folder when it exists, stored as training stores
them) it draws --boxes RandomResizedCrop boxes with `crop.box_from_uniforms`, crops and resizes
each with `proxy_jax.augment.crop.resized_crop` (float32) and with PIL (`Image.crop` then
`resize(BILINEAR)`, which antialiases when shrinking), and prints the largest (and mean)
absolute difference in 8-bit levels, for upscaled and downscaled boxes apart. PIL rounds to
8 bits after each of its two passes, so up to one level is PIL's own rounding.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

# Runnable as `python benchmarks/<name>.py` from anywhere: the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from proxy_jax import data  # pylint: disable=wrong-import-position
from proxy_jax.augment import crop  # pylint: disable=wrong-import-position


def photo_like(rng, side: int) -> np.ndarray:
  """uint8 (side, side, 3): shading, a few hard-edged discs and bars, texture and noise."""
  yy, xx = np.mgrid[:side, :side] / side
  phases = rng.uniform(0, 2 * np.pi, 3)
  image = np.stack(
    [
      0.5 + 0.25 * np.sin(rng.uniform(2, 8) * xx + p) * np.cos(rng.uniform(2, 8) * yy - p)
      for p in phases
    ],
    -1,
  )
  for _ in range(4):
    cy, cx, radius = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
    image[disc] = rng.uniform(0, 1, 3)
  stripes = (np.sin(60 * xx) > 0.7)[..., None] * 0.15
  image = image + stripes + rng.normal(0, 0.04, image.shape)
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def real_photos(folder: str, count: int, side: int) -> list[np.ndarray]:
  if not folder or not os.path.isdir(folder) or count <= 0:
    return []
  paths = [p for p in data.list_files(folder) if p.lower().endswith((".jpg", ".jpeg", ".png"))]
  step = max(1, len(paths) // count)
  return [
    image
    for image in (data.load_image_file(p, side) for p in paths[::step][:count])
    if image is not None
  ]


def compare(images, boxes_per_image: int, size: int, seed: int) -> dict:
  resize = jax.jit(crop.resized_crop, static_argnums=2)
  worst = {"up": 0.0, "down": 0.0}
  counts = {"up": 0, "down": 0}
  totals = {"up": 0.0, "down": 0.0}
  key = jax.random.key(seed)
  for index, image in enumerate(images):
    side = image.shape[0]
    unit = jnp.asarray(image, jnp.float32) / 255.0
    for box_index in range(boxes_per_image):
      uniforms = jax.random.uniform(
        jax.random.fold_in(key, index * 1000 + box_index), (4, crop.TRIES)
      )
      top, left, h, w = (
        int(v) for v in crop.box_from_uniforms(uniforms, side, side, (0.08, 1.0), (3 / 4, 4 / 3))
      )
      pil = Image.fromarray(image).crop((left, top, left + w, top + h))
      want = np.asarray(pil.resize((size, size), Image.BILINEAR), np.float64)
      got = np.asarray(resize(unit, jnp.array([top, left, h, w]), size), np.float64) * 255
      kind = "down" if max(h, w) > size else "up"
      worst[kind] = max(worst[kind], float(np.abs(got - want).max()))
      totals[kind] += float(np.abs(got - want).mean())
      counts[kind] += 1
  means = {k: totals[k] / max(counts[k], 1) for k in totals}
  return {"worst": worst, "counts": counts, "means": means}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--stored", type=int, default=256)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--images", type=int, default=16)
  parser.add_argument("--boxes", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--folder", default="../shared/data/imagenette-mini/train")
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  sets = {"synthetic photo-like": [photo_like(rng, args.stored) for _ in range(args.images)]}
  photos = real_photos(args.folder, args.images, args.stored)
  if photos:
    sets[f"real photos ({args.folder})"] = photos
  print(
    f"stored {args.stored} px -> {args.size} px, RandomResizedCrop boxes "
    "(scale 0.08-1, ratio 3/4-4/3); |ours - PIL| in 8-bit levels, max (mean):"
  )
  for name, images in sets.items():
    result = compare(images, args.boxes, args.size, args.seed)
    up, down = (f"{result['worst'][k]:.4f} ({result['means'][k]:.4f})" for k in ("up", "down"))
    print(
      f"  {name}: {len(images)} images; upscaled boxes ({result['counts']['up']}): {up}; "
      f"downscaled boxes, antialiased ({result['counts']['down']}): {down}"
    )


if __name__ == "__main__":
  main()
