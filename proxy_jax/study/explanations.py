"""Explanation quality of every final model of a study, on the same images.

Each run's final checkpoint explains the same `num_images` examples of the evaluation split
(spread evenly over the shared split: image folders list it class by class, so its first
examples would be a few classes only) with the same CAM method, scored by
`proxy_jax.faithfulness`'s measures (deletion and insertion AUC, average drop, increase
in confidence). The split is decoded once for the whole study: the fairness checks guarantee
that every run has the same data config and split. Models are restored one at a time.

Each run's scores are also written to its trial folder (`explanations.json`, keyed on the
settings, the images and the run's summary.json): a report written again, or over trials
carried to another machine without their checkpoints, reads them back instead of scoring again.
"""

import hashlib
import json
import os
import time

import numpy as np

from proxy_jax.core.io_utils import atomic_write_text
from proxy_jax.study import runs as runs_lib
from proxy_jax.study import spec

SCORES = ("deletion_auc", "insertion_auc", "average_drop_pct", "increase_in_confidence_pct")
CACHE_FILE = "explanations.json"  # In each trial's folder; small, so carry export keeps it.


def _evaluation_images(run: dict, split_name: str, num_images: int):
  from proxy_jax.config import settings as config_settings  # pylint: disable=g-import-not-at-top
  from proxy_jax import data  # pylint: disable=g-import-not-at-top

  settings = config_settings.from_record(run["summary"]["config"])
  split = getattr(data.load_dataset(settings, run["workdir"]), split_name)
  if split is None:
    raise spec.StudyError(f"{run['workdir']}: the dataset has no {split_name} split to explain")
  split = data.eval_view(split, settings.image_size)  # Training images are stored larger.
  count = len(split) if num_images <= 0 else min(num_images, len(split))
  chosen = spread_indices(count, len(split))
  return np.asarray(split.images[chosen]), np.asarray(split.labels[chosen])


def spread_indices(count: int, total: int) -> np.ndarray:
  """`count` <= `total` distinct indices spaced evenly over range(total), first and last
  included: deterministic, and every class gets its share of a split ordered by class."""
  return np.linspace(0, total - 1, count).round().astype(np.int64)


def _digest(*arrays) -> str:
  hashed = hashlib.sha256()
  for array in arrays:
    hashed.update(np.ascontiguousarray(array).tobytes())
  return hashed.hexdigest()


def images_digest(run: dict, explain: dict) -> str:
  """The digest of the images and labels a study explains (any of its runs: they share them)."""
  return _digest(*_evaluation_images(run, explain["split"], explain["num_images"]))


def cache_key(run: dict, explain: dict, images_digest: str) -> dict:
  """What a run's scores depend on: the scoring settings, the explained images and the run
  (its summary.json: config, history and final metrics name one training run)."""
  summary = json.dumps(run["summary"], sort_keys=True, default=str).encode()
  return {
    "settings": {k: explain[k] for k in ("split", "cam", "num_images", "steps")},
    "images_sha256": images_digest,
    "summary_sha256": hashlib.sha256(summary).hexdigest(),
  }


def read_cached(trial_dir: str, key: dict) -> tuple[dict | None, str]:
  """(the cached row, "") where the trial's explanations.json was scored for `key`, else
  (None, why not)."""
  path = os.path.join(trial_dir, CACHE_FILE)
  if not os.path.isfile(path):
    return None, f"no {CACHE_FILE}"
  try:
    with open(path) as f:
      cached = json.load(f)
    row, cached_key = cached["row"], cached["key"]
  except (OSError, ValueError, KeyError, TypeError) as error:
    return None, f"{CACHE_FILE} unreadable ({type(error).__name__})"
  if cached_key != key:
    differ = [k for k in key if cached_key.get(k) != key[k]]
    return None, f"{CACHE_FILE} was scored for other {', '.join(differ)}"
  return {**row, "from_cache": True}, ""


def _restore(run: dict, shared_models: dict):
  from proxy_jax.run import restore  # pylint: disable=g-import-not-at-top

  model, variables, config, class_names = restore.restore_for_inference(run["workdir"])
  # Equal modules, one object: jit caches on the bound `model.apply`, which compares by
  # object identity, so a fresh module per run would recompile every function per run.
  return shared_models.setdefault(model, model), variables, config, class_names


def _explain(explain: dict, model, variables, config, images):
  """(predicted classes, CAMs of them) of `images`."""
  from proxy_jax import infer  # pylint: disable=g-import-not-at-top

  predicted = infer.predict_logits(model, variables, images, int(config.eval_batch_size)).argmax(-1)
  return predicted, infer.cam_maps(explain["cam"], model, variables, images, predicted)


def _score(explain: dict, restored: tuple, images, labels) -> tuple[dict, tuple]:
  from proxy_jax import faithfulness  # pylint: disable=g-import-not-at-top

  model, variables, config, _ = restored
  predicted, maps = _explain(explain, model, variables, config, images)
  scores = faithfulness.explanation_scores(
    model, variables, images, maps, predicted, explain["steps"]
  )
  row = {
    "images": len(images),
    "cam_method": explain["cam"],
    "accuracy": float((predicted == labels).mean()),
    "deletion_auc": float(scores["deletion_auc"].mean()),
    "insertion_auc": float(scores["insertion_auc"].mean()),
    "average_drop_pct": float(100 * scores["drop"].mean()),
    "increase_in_confidence_pct": float(100 * scores["increase"].mean()),
    "scored_at": runs_lib.code_version(),
  }
  return row, (predicted, maps)


def score_runs(study: spec.Study, runs: dict, grid: bool = True) -> tuple[list, list, float]:
  """(rows, grid panels of the first seed, seconds); one row per (arm, seed) run.

  A run's row is read back from its explanations.json where that was scored for the same
  settings, images and run (so a report over carried trials, which have no checkpoints, keeps
  them); otherwise it is scored from the final checkpoint and written there. The grid's panels
  need the checkpoints of the first seed's runs; an arm whose run has none is left out of it
  (`grid=False`: no panels).
  """
  started = time.time()
  explain = study.explain
  first = runs.get((study.baseline, study.seeds[0])) or next(iter(runs.values()))
  images, labels = _evaluation_images(first, explain["split"], explain["num_images"])
  images_digest = _digest(images, labels)
  shown = spread_indices(min(explain["grid_images"], len(images)), len(images))
  rows, panels, shared_models = [], [], {}
  for seed in study.seeds:
    for arm in study.arms:
      if (arm, seed) not in runs:
        continue
      run, begin = runs[arm, seed], time.time()
      key = cache_key(run, explain, images_digest)
      row, why = read_cached(run["workdir"], key)
      checkpointed = os.path.isdir(os.path.join(run["workdir"], "checkpoints"))
      in_grid = grid and seed == study.seeds[0] and checkpointed
      if row is not None and not in_grid:
        rows.append({"arm": arm, "seed": seed, **row})
        continue
      if not checkpointed:
        raise spec.StudyError(
          f"{run['workdir']}: no checkpoints/ to score its explanations from and {why}: "
          "report with --explain=false, or where the run's checkpoints are"
        )
      restored = _restore(run, shared_models)
      if row is None:
        row, (predicted, maps) = _score(explain, restored, images, labels)
        row = {**row, "seconds": time.time() - begin}
        atomic_write_text(
          os.path.join(run["workdir"], CACHE_FILE),
          json.dumps({"key": key, "row": row}, indent=1, sort_keys=True),
        )
        row = {**row, "from_cache": False}
        predicted, maps = predicted[shown], maps[shown]
      else:  # Scores from the cache; only the grid's few maps are computed.
        predicted, maps = _explain(explain, *restored[:3], images[shown])
      rows.append({"arm": arm, "seed": seed, **row})
      if in_grid:
        class_names = restored[3]
        panels.append(
          (
            arm,
            images[shown],
            maps,
            [class_names[i] for i in predicted],
            [class_names[i] for i in labels[shown]],
          )
        )
  return rows, panels, time.time() - started
