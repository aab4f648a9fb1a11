"""Paired statistics of a study: t intervals, paired t-test, exact sign test, Holm correction.

Every arm is compared with the baseline arm seed by seed (the same split, initialisation and
data order), so the unit of analysis is the per-seed difference. With few seeds these tests
have little power; the report says so rather than hiding it. Every seed is scored on the same
test images, so the intervals speak about that test set (they are conditional on it): they
capture seed-to-seed variation, not the sampling of the test set.
"""

import math

import numpy as np
from scipy import integrate, optimize
from scipy import stats as scipy_stats

# 2^16 sign patterns: an exact permutation test stays instant up to this many seeds.
MAX_EXACT_FLIPS = 16


def sign_flip_p(differences) -> float:
  """Exact two-sided paired permutation test of the mean: the share of the 2^n sign flips of
  the differences whose |mean| is at least the observed one (Fisher's randomisation test)."""
  d = np.asarray(differences, np.float64)
  n = len(d)
  if n > MAX_EXACT_FLIPS:
    raise ValueError(f"an exact sign-flip test over {n} differences is too large")
  flips = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)  # (2^n, n) of +-1
  means = np.abs(flips @ d) / n
  observed = abs(float(d.mean()))
  # Ties within rounding count as "as extreme" (sums of the same numbers in another order).
  return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def paired_t(differences, confidence: float = 0.95) -> dict:
  """Mean difference, its t interval and the two-sided paired t-test p-value.

  With zero spread the t statistic and interval are undefined (the interval is NaN). The
  p-value then comes from the exact sign-flip permutation test instead, which does not need a
  spread: n equal non-zero differences give 2 / 2^n (not 0: two seeds that agree are not
  proof), all-zero differences give 1. `p_method` names which test gave `t_p`.
  """
  d = np.asarray(differences, np.float64)
  n = len(d)
  if n < 2:
    raise ValueError(f"a paired t interval needs at least 2 differences, got {n}")
  mean, std = float(d.mean()), float(d.std(ddof=1))
  if std == 0.0:
    return {
      "n": n,
      "mean": mean,
      "std": 0.0,
      "ci_low": math.nan,
      "ci_high": math.nan,
      "t_p": sign_flip_p(d),
      "p_method": "sign-flip",
    }
  sem = std / math.sqrt(n)
  half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
  t = mean / sem
  p = float(2 * scipy_stats.t.sf(abs(t), n - 1))
  return {
    "n": n,
    "mean": mean,
    "std": std,
    "ci_low": mean - half,
    "ci_high": mean + half,
    "t_p": p,
    "p_method": "t",
  }


def sign_test(differences) -> float:
  """Exact two-sided sign test (binomial, p = 1/2) on the non-zero differences; 1 if none."""
  d = np.asarray(differences, np.float64)
  wins, losses = int(np.sum(d > 0)), int(np.sum(d < 0))
  n = wins + losses
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2.0**n
  return min(1.0, 2.0 * tail)


def holm(p_values) -> np.ndarray:
  """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), input order kept."""
  p = np.asarray(p_values, np.float64)
  m = len(p)
  order = np.argsort(p, kind="stable")
  adjusted = np.empty(m)
  running = 0.0
  for rank, index in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p[index]))
    adjusted[index] = running
  return adjusted


def smallest_sign_p(n: int) -> float:
  """The smallest p-value a two-sided sign test can reach with n pairs."""
  return min(1.0, 2.0 * 0.5**n)


def t_power(difference: float, std: float, n: int, alpha: float, sides: int = 1) -> float:
  """Power of the paired t-test at level `alpha` with `n` pairs, when the true mean difference
  is `difference` and the differences' standard deviation `std` (noncentral t). One-sided
  (`sides=1`): rejecting toward a positive difference; two-sided (`sides=2`): either tail at
  alpha / 2, both counted."""
  if sides not in (1, 2):
    raise ValueError(f"sides={sides!r} must be 1 or 2")
  critical = float(scipy_stats.t.ppf(1.0 - alpha / sides, n - 1))
  shift = difference * math.sqrt(n) / std
  # scipy returns NaN where a tail underflows (a large shift at few degrees): that tail is 0.
  power = float(np.nan_to_num(scipy_stats.nct.sf(critical, n - 1, shift)))
  if sides == 2:
    power += float(np.nan_to_num(scipy_stats.nct.cdf(-critical, n - 1, shift)))
  return power


def detectable_difference(
  std: float, n: int, alpha: float, power: float = 0.8, sides: int = 1
) -> float:
  """The smallest true mean difference that the paired t-test at level `alpha` (one- or
  two-sided) with `n` pairs detects with probability `power`, for differences of standard
  deviation `std` (NaN when undefined: fewer than two pairs, or no spread)."""
  if n < 2 or not std > 0:
    return math.nan
  high = std
  while t_power(high, std, n, alpha, sides) < power:  # Power grows with the difference.
    high *= 2.0
  return float(
    optimize.brentq(lambda d: t_power(d, std, n, alpha, sides) - power, 0.0, high, xtol=1e-10 * std)
  )


# ---------------------------------------------------------------- equivalence


def tost(differences, margin: float, alpha: float = 0.05) -> dict:
  """Two one-sided paired t-tests (Schuirmann's TOST) of equivalence within +-`margin`.

  p_lower tests "mean <= -margin", p_upper "mean >= +margin"; `p` is the larger. The outcome:
  "equivalent" when both are rejected at `alpha` (the 1 - 2 alpha interval lies inside the
  margin), "not equivalent" when the interval lies wholly outside it (the mean differs from
  zero by more than the margin at that level), "inconclusive" otherwise.
  """
  d = np.asarray(differences, np.float64)
  n = len(d)
  if n < 2:
    raise ValueError(f"an equivalence test needs at least 2 differences, got {n}")
  if not margin > 0:
    raise ValueError(f"margin {margin!r} must be positive")
  mean, std = float(d.mean()), float(d.std(ddof=1))
  row = {"n": n, "mean": mean, "std": std, "margin": margin, "alpha": alpha}
  if std == 0.0:  # No spread: the mean is known exactly.
    inside = abs(mean) < margin
    row.update(
      p_lower=0.0 if inside or mean > 0 else 1.0,
      p_upper=0.0 if inside or mean < 0 else 1.0,
      ci_low=mean,
      ci_high=mean,
    )
  else:
    sem = std / math.sqrt(n)
    row.update(
      p_lower=float(scipy_stats.t.sf((mean + margin) / sem, n - 1)),
      p_upper=float(scipy_stats.t.cdf((mean - margin) / sem, n - 1)),
    )
    half = float(scipy_stats.t.ppf(1.0 - alpha, n - 1)) * sem
    row.update(ci_low=mean - half, ci_high=mean + half)
  row["p"] = max(row["p_lower"], row["p_upper"])
  if row["p"] < alpha:
    row["outcome"] = "equivalent"
  elif row["ci_low"] >= margin or row["ci_high"] <= -margin:
    row["outcome"] = "not equivalent"
  else:
    row["outcome"] = "inconclusive"
  return row


def tost_power(
  std: float, n: int, margin: float, alpha: float = 0.05, difference: float = 0.0
) -> float:
  """Probability that the paired TOST at `alpha` with `n` pairs declares equivalence within
  +-`margin` when the true mean difference is `difference` and the differences' standard
  deviation `std`. Exact: given the sample's standard deviation s, equivalence is declared when
  the mean lies within +-(margin - t * s / sqrt(n)); integrated over s (chi law, n - 1 degrees)."""
  if n < 2 or not std > 0:
    return math.nan
  df = n - 1
  critical = float(scipy_stats.t.ppf(1.0 - alpha, df))
  sem = std / math.sqrt(n)

  def declared(chi2):  # P(equivalent | the sample variance is std^2 * chi2 / df).
    half = margin - critical * std * math.sqrt(chi2 / df) / math.sqrt(n)
    if half <= 0:
      return 0.0
    return float(
      scipy_stats.norm.cdf((half - difference) / sem)
      - scipy_stats.norm.cdf((-half - difference) / sem)
    )

  # Beyond this chi2 the interval is wider than the margin: nothing is declared.
  top = df * (margin * math.sqrt(n) / (critical * std)) ** 2
  value, _ = integrate.quad(
    lambda c: declared(c) * scipy_stats.chi2.pdf(c, df), 0.0, top, limit=200
  )
  return float(value)


def compare_arms(values: dict, baseline: str, arms: list, seeds: list) -> list[dict]:
  """Per arm (other than the baseline): paired differences arm - baseline over `seeds`.

  `values[(arm, seed)]` holds one metric. Holm corrects the t and sign p-values across the
  compared arms (one family per metric). Arms missing a seed are compared on the seeds they
  share with the baseline, and the row says how many.
  """
  rows = []
  for arm in arms:
    if arm == baseline:
      continue
    shared = [s for s in seeds if (arm, s) in values and (baseline, s) in values]
    diffs = np.array([values[arm, s] - values[baseline, s] for s in shared])
    row = {
      "arm": arm,
      "seeds": shared,
      "diffs": diffs.tolist(),
      "wins": int(np.sum(diffs > 0)),
      "losses": int(np.sum(diffs < 0)),
    }
    if len(shared) >= 2:
      row.update(paired_t(diffs))
      row["sign_p"] = sign_test(diffs)
    else:
      row.update(
        {
          "n": len(shared),
          "mean": float("nan"),
          "std": float("nan"),
          "ci_low": float("nan"),
          "ci_high": float("nan"),
          "t_p": float("nan"),
          "p_method": "none",
          "sign_p": float("nan"),
        }
      )
    rows.append(row)
  tested = [r for r in rows if not math.isnan(r["t_p"])]
  for key in ("t_p", "sign_p"):
    adjusted = holm([r[key] for r in tested]) if tested else []
    for row, value in zip(tested, adjusted):
      row[f"holm_{key}"] = float(value)
  for row in rows:
    row["family"] = len(tested)
    row.setdefault("holm_t_p", float("nan"))
    row.setdefault("holm_sign_p", float("nan"))
  return rows


def verdict(row: dict, unit: str = "points", scale: float = 100.0, alpha: float = 0.05) -> str:
  """A plain sentence for one paired comparison, decided by the Holm-adjusted test.

  The decision is the Holm-adjusted p-value's; the interval beside it is unadjusted. Where the
  two disagree (the interval excludes 0 but Holm does not reject) the sentence says so, so a
  reader does not see "no difference" next to an interval that plainly excludes 0.
  """
  if math.isnan(row["t_p"]):
    return f"not tested (only {row['n']} paired seed(s))"
  mean, low, high = scale * row["mean"], scale * row["ci_low"], scale * row["ci_high"]
  test = "t-test" if row.get("p_method", "t") == "t" else "sign-flip test (no spread)"
  interval = (
    "95% CI undefined (every seed gave the same difference)"
    if math.isnan(low)
    else f"unadjusted 95% CI {low:+.2f} to {high:+.2f}"
  )
  detail = (
    f"{mean:+.2f} {unit}, {interval}, {test} Holm p={row['holm_t_p']:.3g}"
    f", sign test Holm p={row['holm_sign_p']:.3g}, wins/losses {row['wins']}/"
    f"{row['losses']} of {row['n']} seeds"
  )
  if row["holm_t_p"] < alpha and mean != 0:
    direction = "better" if mean > 0 else "worse"
    return f"{direction} by {abs(mean):.2f} {unit} ({detail})"
  if not math.isnan(low) and (low > 0 or high < 0):
    return (
      f"not significant after Holm's correction for the {row.get('family', 'several')} "
      f"compared arms, although this arm's own unadjusted interval excludes 0 ({detail})"
    )
  return f"no measurable difference ({detail})"
