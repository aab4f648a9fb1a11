"""Explanation quality of every final model of a study, on the same images.

Each run's final checkpoint explains the same `num_images` examples of the evaluation split
(spread evenly over the shared split: image folders list it class by class, so its first
examples would be a few classes only) with the same CAM method, scored by
`proxy_jax.faithfulness`'s measures (deletion and insertion AUC, average drop, increase
in confidence). The split is decoded once for the whole study: the fairness checks guarantee
that every run has the same data config and split. Models are restored one at a time.
"""

import time

import numpy as np

from proxy_jax.study import spec

SCORES = ("deletion_auc", "insertion_auc", "average_drop_pct", "increase_in_confidence_pct")


def _evaluation_images(run: dict, split_name: str, num_images: int):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from proxy_jax import data  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(run["summary"]["config"])
  split = getattr(data.load_dataset(config, run["workdir"]), split_name)
  if split is None:
    raise spec.StudyError(f"{run['workdir']}: the dataset has no {split_name} split to explain")
  split = data.eval_view(split, config.image_size)  # Training images are stored larger.
  count = len(split) if num_images <= 0 else min(num_images, len(split))
  chosen = spread_indices(count, len(split))
  return np.asarray(split.images[chosen]), np.asarray(split.labels[chosen])


def spread_indices(count: int, total: int) -> np.ndarray:
  """`count` <= `total` distinct indices spaced evenly over range(total), first and last
  included: deterministic, and every class gets its share of a split ordered by class."""
  return np.linspace(0, total - 1, count).round().astype(np.int64)


def score_runs(study: spec.Study, runs: dict) -> tuple[list, list, float]:
  """(rows, grid panels of the first seed, seconds); one row per (arm, seed) run."""
  from proxy_jax import faithfulness, infer, restore  # pylint: disable=g-import-not-at-top
  started = time.time()
  explain = study.explain
  first = runs.get((study.baseline, study.seeds[0])) or next(iter(runs.values()))
  images, labels = _evaluation_images(first, explain["split"], explain["num_images"])
  rows, panels, shared_models = [], [], {}
  for seed in study.seeds:
    for arm in study.arms:
      if (arm, seed) not in runs:
        continue
      run = runs[arm, seed]
      begin = time.time()
      model, variables, config, class_names = restore.restore_for_inference(run["workdir"])
      # Equal modules, one object: jit caches on the bound `model.apply`, which compares by
      # object identity, so a fresh module per run would recompile every function per run.
      model = shared_models.setdefault(model, model)
      logits = infer.predict_logits(model, variables, images, int(config.eval_batch_size))
      predicted = logits.argmax(-1)
      maps = infer.cam_maps(explain["cam"], model, variables, images, predicted)
      scores = faithfulness.explanation_scores(model, variables, images, maps, predicted,
                                          explain["steps"])
      rows.append({"arm": arm, "seed": seed, "images": len(images),
                   "cam_method": explain["cam"], "accuracy": float((predicted == labels).mean()),
                   "deletion_auc": float(scores["deletion_auc"].mean()),
                   "insertion_auc": float(scores["insertion_auc"].mean()),
                   "average_drop_pct": float(100 * scores["drop"].mean()),
                   "increase_in_confidence_pct": float(100 * scores["increase"].mean()),
                   "seconds": time.time() - begin})
      if seed == study.seeds[0]:
        shown = spread_indices(min(explain["grid_images"], len(images)), len(images))
        panels.append((arm, images[shown], maps[shown],
                       [class_names[i] for i in predicted[shown]],
                       [class_names[i] for i in labels[shown]]))
  return rows, panels, time.time() - started
