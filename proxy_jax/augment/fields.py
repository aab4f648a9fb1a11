"""Checks of the augment settings fields shared by the family modules; each names the field.

ConfigError is a ValueError that every command line reports as a one-line user error.
"""

import math

from proxy_jax.core import errors


def is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_number(settings, field, low, high, low_open=False, high_open=False):
  value = getattr(settings, field)
  too_low = value <= low if low_open else value < low
  too_high = value >= high if high_open else value > high
  if not is_number(value) or too_low or too_high:
    errors.fail_field(
      f"augment.{field}",
      value,
      f"must be a finite number in {'(' if low_open else '['}{low}, "
      f"{high}{')' if high_open else ']'}",
    )
