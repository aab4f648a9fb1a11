"""Studies: named arms x seeds on one setting, run through the sweep runner, reported fairly.

  python -m proxy_jax.study --study=configs/studies/digits.py --workdir=runs/study_digits

A study file defines `get_study()` returning a `spec.Study` (the base config, the common
overrides, the seeds and the named arms). Every (seed, arm) is one named trial of
`proxy_jax.sweep` (subprocess, journal, resume, `--shard i/n`); when all have finished, the
report in `experiments/results/<study>/` gives per-arm tables, paired differences against the
baseline arm with t intervals, t and sign tests with a Holm correction, plots, explanation
scores and the study's own overhead, after checking that the arms of every seed shared their
split, initial weights, data order and epochs (`runs.fairness_checks`).

Modules: spec (study files and their trials), preregistration (the declaration and its gate),
power (detectable effects and TOST power from earlier spreads), stats (paired tests, TOST),
runs (reading the runs and the fairness checks), manipulation (what the proxy steps did),
explanations (CAM faithfulness of every final model) and backfill (its scores from an older
report), report, report_sections, declaration_report and plots (the report), settings_table
(each arm's settings), pilot (the pilot's choice), reuse (runs shared with an earlier study),
arms (the thesis's arms), __main__ (the command).
"""
