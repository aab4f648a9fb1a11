"""The pure, jitted steps of training: train (augmentation, loss, update), evaluation and
prediction, each a module-level function jitted once (the train step donates the state).

The loop (`train`) runs them; the batch-size finder probes the train step
(`train.finder_step_factory`).
A frozen saliency model, when the config names one, is loaded once by the run's setup
(`restore.load_frozen`) and passed into the step factory and then the step as an argument, not
baked in as a constant: the factories read no file.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from proxy_jax import augment, models
from proxy_jax.augment import crop
from proxy_jax.images import preprocess
from proxy_jax.run.step_metrics import EvalMetrics, TrainMetrics


def cross_entropy(logits, targets, label_smoothing: float = 0.0):
  """Per-example cross-entropy against soft targets (B, K), always in float32.

  Label smoothing composes with mixing: the (mixed) soft targets are smoothed, as timm does.
  """
  logits = logits.astype(jnp.float32)
  targets = optax.smooth_labels(targets.astype(jnp.float32), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def masked_mean(values, mask):
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def num_classes_of(state, images):
  """The model's class count, read from its output shape at trace time (no compute)."""
  return jax.eval_shape(state.apply_fn, models.variables_of(state), images[:1]).shape[-1]


def _loss_fn(params, state, inputs, targets, mask, dropout_key, jsd_weight, label_smoothing):
  """The training loss of `params` on augmented `inputs`; (loss, (logits, per-example loss,
  batch-stat updates)). With AugMix's JSD loss, `inputs` stacks the clean batch and two views:
  one forward pass."""
  logits, updates = state.apply_fn(
    models.variables_of(state, params),
    inputs,
    train=True,
    mutable=["batch_stats"],
    rngs={"dropout": dropout_key},
  )
  if jsd_weight:
    logits, logits_aug1, logits_aug2 = jnp.split(logits, 3)
  per_example = cross_entropy(logits, targets, label_smoothing)
  loss = masked_mean(per_example, mask)
  if jsd_weight:
    consistency = augment.jensen_shannon_per_example(logits, logits_aug1, logits_aug2)
    loss += jsd_weight * masked_mean(consistency, mask)
  return loss, (logits, per_example, updates)


def step_keys(step_key, step):
  """(augmentation key, dropout key) of global step `step`: the train step's draws."""
  augment_key, dropout_key = jax.random.split(jax.random.fold_in(step_key, step))
  return augment_key, dropout_key


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def worker_crop_boxes(step_key, steps, batch_size: int, side: int, scale, ratio):
  """(len(steps), batch_size, 4) int32: the RandomResizedCrop boxes the train step of each
  global step draws (for the stream's workers to cut: `data/crops.py`)."""

  def one(step):
    augment_key, _ = step_keys(step_key, step)
    return crop.random_boxes(augment.crop_key(augment_key), batch_size, side, side, scale, ratio)

  return jax.vmap(one)(steps)


def train_step(
  state,
  batch,
  key,
  frozen=None,
  *,
  augment_config,
  label_smoothing: float,
  frozen_apply_fn=None,
  image_size: int | None = None,
  cropped: bool = False,
):
  """One optimiser step on an augmented batch (proxy_jax.augment: crop of the stored images to
  `image_size` (None: their own side), flip/rotation, policy, erasing, mixing, normalisation).
  `key` is the run's step key: the step number is folded in here, on the device, so the host
  never reads the step back. `frozen`: variables of the frozen saliency model when
  `augment.saliency_source` names one.

  Train accuracy counts each example's dominant label (the argmax of its soft target: the
  class that gave the larger share of a mixed image). `cropped`: the batch arrives cropped
  to `image_size` by the stream's workers, with the boxes this step would draw
  (`worker_crop_boxes`).
  """
  augment_key, dropout_key = step_keys(key, state.step)
  size = image_size or batch["image"].shape[1]
  augment_fn = augment.make_augment_fn(
    augment_config, num_classes_of(state, batch["image"][:, :size, :size]), size, cropped
  )
  inputs, targets = augment_fn(
    batch["image"],
    batch["label"],
    augment_key,
    is_proxy=batch.get("is_proxy"),
    models=augment.models_of(state, frozen_apply_fn, frozen),
  )
  grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)
  (loss, (logits, per_example, updates)), grads = grad_fn(
    state.params,
    state,
    inputs,
    targets,
    batch["mask"],
    dropout_key,
    augment.jsd_weight(augment_config),
    label_smoothing,
  )
  state = state.apply_gradients(
    grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats)
  )
  finite = jnp.isfinite(loss) & all_finite(state.params)
  return state, TrainMetrics.single_from_model_output(
    logits=logits.astype(jnp.float32),
    labels=jnp.argmax(targets, axis=-1),
    mask=batch["mask"],
    loss=per_example,
    step=state.step,
    finite=finite,
  )


def eval_step(state, batch):
  """No augmentation: validation and test see the plain, normalised images."""
  logits = state.apply_fn(models.variables_of(state), preprocess.eval_inputs(batch["image"]))
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(batch["label"], logits.shape[-1], dtype=jnp.float32)
  return EvalMetrics.single_from_model_output(
    logits=logits, labels=batch["label"], mask=batch["mask"], loss=cross_entropy(logits, targets)
  )


def predict_step(apply_fn, variables, images_uint8):
  """Eval-mode logits of uint8 images (inference and the proxy step's predictions)."""
  return apply_fn(variables, preprocess.eval_inputs(images_uint8))


def make_train_step(settings, replicated=None, frozen=(None, None), cropped: bool = False):
  """The jitted train step `(state, batch, step_key) -> (state, metrics)`, state donated.

  `cropped`: batches arrive cropped by the stream's workers (`data.crops_in_workers`).
  `frozen`: (apply_fn, variables) of the frozen saliency model when `augment.saliency_source`
  names one, loaded once by the run's setup (`restore.load_frozen`); its variables go into the
  step as an argument, not a constant. The factory reads no file.
  """
  frozen_apply_fn, frozen_variables = frozen
  step = functools.partial(
    train_step,
    augment_config=settings.augment,
    label_smoothing=settings.label_smoothing,
    frozen_apply_fn=frozen_apply_fn,
    image_size=settings.image_size,
    cropped=cropped,
  )
  jitted = jax.jit(
    step, donate_argnums=0, out_shardings=replicated if replicated is not None else None
  )
  if frozen_variables is None:
    return jitted
  if replicated is not None:
    frozen_variables = jax.device_put(frozen_variables, replicated)
  return functools.partial(jitted, frozen=frozen_variables)


def make_eval_step():
  return jax.jit(eval_step)


def make_predict_step():
  """The jitted `predict_step(apply_fn, variables, images_uint8)`, `apply_fn` static."""
  return jax.jit(predict_step, static_argnums=0)
