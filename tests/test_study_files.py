"""The study files' building blocks: the thesis schedule scaled to a study's epochs, the arms at
small-image settings."""

import pytest

from proxy_jax import proxy
from proxy_jax.study import arms


@pytest.mark.parametrize("epochs,schedule", [(10, "1,p,3,p,2,p,3,p,1"),
                                             (20, "3,p,5,p,5,p,5,p,2"),
                                             (36, "5,p,9,p,9,p,9,p,4"),
                                             (60, "8,p,15,p,15,p,15,p,7")])
def test_thesis_schedule_scales_the_proxy_steps(epochs, schedule):
  """The schedules the existing studies wrote by hand, and the 60-epoch one; each proxy step
  sits after the nearest epoch to the thesis's share (5, 14, 23 and 32 of 36)."""
  assert arms.thesis_schedule(epochs) == schedule
  due = proxy.parse_schedule(schedule, epochs, True).proxy_epochs
  assert [abs(d - s * epochs / 36) <= 0.5 for d, s in zip(due, (5, 14, 23, 32))] == [True] * 4


def test_thesis_schedule_refuses_too_few_epochs():
  assert arms.thesis_schedule(5) == "1,p,1,p,1,p,1,p,1"
  with pytest.raises(ValueError, match="4 epochs are too few"):
    arms.thesis_schedule(4)


def test_small_image_settings_replace_the_default_ones_everywhere():
  small = arms.thesis_arms(arms.thesis_proxy("1,p,1"), arms.SMALL_IMAGE)
  default = arms.thesis_arms(arms.thesis_proxy("1,p,1"))
  assert list(small) == list(default)  # The same arms, in the same order.
  assert small["cutmix"]["augment.mix_prob"] == 0.5 and small["mixup"]["augment.mix_alpha"] == 1
  for name in ("proxy+cutmix", "proxy+cutmix-skip"):
    assert small[name]["augment.mix_prob"] == 0.5 and small[name]["proxy.enabled"]
  # Every method's small-image values come from the settings table.
  assert small["saliencymix"]["augment.mix_prob"] == 0.5
  assert small["cutout"]["augment.erase_size"] == 0.5 and small["snapmix"]["augment.mix_prob"] == 0.5
