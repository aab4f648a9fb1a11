"""Metrics of the train and eval steps as clu.metrics collections, accumulated on the device.

Each jitted step reduces over its global batch (padded rows have mask 0), so the sums and
counts are exact over batches, devices and hosts; the loop merges them on the device and
fetches once per epoch (`host_values`), dividing on the host.
"""

import flax
from clu import metrics
import jax
import jax.numpy as jnp
import numpy as np

NO_STEP = np.iinfo(np.int32).max


@flax.struct.dataclass
class TopFiveAccuracy(metrics.Average):
  """Share of examples whose label is among the five highest logits (all, with < 5 classes)."""

  @classmethod
  def from_model_output(cls, *, logits, labels, mask=None, **_):
    top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    hits = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
    return super().from_model_output(hits, mask=mask)


@flax.struct.dataclass
class FirstNonFiniteStep(metrics.Metric):
  """The earliest step (count after it) whose loss or updated parameters were not finite;
  NO_STEP if none. Merging takes the minimum, so one fetch per epoch finds it."""

  step: jnp.ndarray

  @classmethod
  def empty(cls):
    return cls(step=jnp.array(NO_STEP, jnp.int32))

  @classmethod
  def from_model_output(cls, *, step, finite, **_):
    return cls(step=jnp.where(finite, NO_STEP, step).astype(jnp.int32))

  def merge(self, other):
    return type(self)(step=jnp.minimum(self.step, other.step))

  def compute(self):
    return self.step


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Accuracy
  top5: TopFiveAccuracy


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Accuracy
  top5: TopFiveAccuracy
  first_nonfinite_step: FirstNonFiniteStep


merge_metrics = jax.jit(lambda totals, batch: totals.merge(batch))


def host_values(collection) -> dict:
  """Fetches accumulated metrics (one transfer) and divides on the host."""
  return {k: float(v) for k, v in jax.device_get(collection).compute().items()}
