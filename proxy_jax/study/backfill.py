"""Give carried trials of an older report their explanation scores back, from that report.

Reports written before the per-trial cache (`explanations.json`, proxy_jax/study/explanations.py)
kept their runs' explanation scores only in their own `explanations.csv`. Their trials were
carried without checkpoints, so a later report over them could not score them again and had to
drop the scores (`--explain=false`). This writes each such trial's cache from the report's own
rows, keyed as the report code keys it today (settings, explained images, the run's
summary.json), with `scored_at` naming the report that scored them:

  python -m proxy_jax.study.backfill --study=configs/studies/imagenette_mini_control_mixup.py \
      --workdir=runs/control_mixup \
      --report=experiments/results/imagenette_mini_control_mixup/explanations.csv \
      --scored_at="the report of commit 4de5d8f" [--set data.path=...]

Only rows scored with the study's own settings (CAM method and image count) are taken; a trial
that already has an explanations.json is never touched. A later report then reads the scores
back (and says which report scored them).
"""

import json
import os

from absl import app
from absl import flags
import pandas as pd

from proxy_jax import cli
from proxy_jax.core.io_utils import atomic_write_text
from proxy_jax.study import explanations
from proxy_jax.study import runs as runs_lib
from proxy_jax.study import spec

ROW_FIELDS = ("images", "cam_method", "accuracy", *explanations.SCORES)


def backfill(study: spec.Study, workdir: str, report_csv: str, scored_at: str) -> dict:
  """Writes the missing caches; returns {"written": [...], "kept": [...], "absent": [...]}."""
  if not os.path.isfile(report_csv):
    raise spec.StudyError(f"--report={report_csv}: no such file")
  try:
    table = pd.read_csv(report_csv)
    rows = {(r["arm"], int(r["seed"])): r for r in table.to_dict("records")}
  except (ValueError, KeyError, TypeError) as error:
    raise spec.StudyError(
      f"{report_csv} is not a study report's explanations.csv ({type(error).__name__}: {error})"
    ) from error
  runs, _ = runs_lib.load_runs(study, workdir)
  explain = study.explain
  first = runs.get((study.baseline, study.seeds[0])) or next(iter(runs.values()))
  digest = explanations.images_digest(first, explain)
  done = {"written": [], "kept": [], "absent": []}
  for (arm, seed), run in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
    path = os.path.join(run["workdir"], explanations.CACHE_FILE)
    row = rows.get((arm, seed))
    if os.path.exists(path):
      done["kept"].append(run["name"])
    elif (
      row is None
      or row["cam_method"] != explain["cam"]
      or (explain["num_images"] > 0 and int(row["images"]) > explain["num_images"])
    ):
      done["absent"].append(run["name"])
    else:
      cached = {k: row[k] for k in ROW_FIELDS}
      cached.update(
        images=int(row["images"]),
        scored_at=scored_at,
        seconds=float(row.get("seconds", float("nan"))),
      )
      atomic_write_text(
        path,
        json.dumps(
          {"key": explanations.cache_key(run, explain, digest), "row": cached},
          indent=1,
          sort_keys=True,
        ),
      )
      done["written"].append(run["name"])
  return done


def define_flags():
  flags.DEFINE_string("study", None, "The study file.", required=True)
  flags.DEFINE_string(
    "workdir", None, "The study's runs (e.g. carried trials restored).", required=True
  )
  flags.DEFINE_string("report", None, "The older report's explanations.csv.", required=True)
  flags.DEFINE_string(
    "scored_at",
    None,
    "Which report scored them, e.g. 'the report of commit 4de5d8f'.",
    required=True,
  )
  flags.DEFINE_multi_string("set", [], "Common override, as for the study command.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  study = spec.with_common_overrides(spec.load_study(f.study), f.set, f.workdir)
  done = backfill(study, f.workdir, f.report, f.scored_at)
  print(
    f"explanations.json written for {len(done['written'])} run(s), kept for "
    f"{len(done['kept'])}, no matching row for {len(done['absent'])}"
    + (f": {', '.join(done['absent'])}" if done["absent"] else ""),
    flush=True,
  )


if __name__ == "__main__":
  cli.run(main, define_flags)
