"""What a run starts from: the model, the optimiser and its learning-rate schedule, the state.

`create_train_state` builds a fresh `TrainState` (float32 parameters, batch statistics, AdamW or
SGD with Nesterov momentum, an optional lower learning rate for a pretrained backbone) from the
config alone, so the trainer, inference, the batch-size finder and the benchmarks all build the
same one.
"""

from typing import Any, Callable

from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from proxy_jax import models

# `config.optimizer.schedule` values `learning_rate_schedule` builds.
LR_SCHEDULES = ("warmup_cosine", "onecycle", "constant")
# `config.optimizer.name` values `create_optimizer` builds.
OPTIMIZERS = ("adamw", "sgd")
# `config.optimizer.decay_norm_and_bias`: "auto" (False for SGD, True for AdamW) or a bool.
DECAY_NORM_AND_BIAS_CHOICES = ("auto", "true", "false")


class TrainState(train_state.TrainState):
  batch_stats: Any


def create_model(settings, num_classes: int):
  overrides = {"width": settings.model.width} if settings.model.width else {}
  return models.create(
    settings.model.name,
    num_classes,
    settings.image_size,
    settings.dtype,
    small_stem=settings.model.small_stem,
    **overrides,
  )


def learning_rate_schedule(settings, steps_per_epoch: int):
  opt = settings.optimizer
  total = max(1, settings.num_epochs * steps_per_epoch)
  if opt.schedule == "constant":
    return optax.constant_schedule(opt.learning_rate)
  if opt.schedule == "onecycle":
    return optax.cosine_onecycle_schedule(total, opt.learning_rate)
  warmup = min(int(opt.warmup_epochs * steps_per_epoch), total - 1)
  return optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, warmup, total)


def decays_norm_and_bias(opt) -> bool:
  """Whether weight decay reaches biases and normalisation scales/offsets.

  "auto": not for SGD (the from-scratch references: timm's and big_vision's recipes exclude
  them), yes for AdamW (optax.adamw's default). Config strings "true"/"false" or bools.
  """
  value = opt.decay_norm_and_bias
  if isinstance(value, str):
    if value.lower() not in DECAY_NORM_AND_BIAS_CHOICES:
      raise ValueError(f"decay_norm_and_bias={value!r}; choose one of auto, true, false")
    if value.lower() == "auto":
      return opt.name != "sgd"
    return value.lower() == "true"
  return bool(value)


def weight_decay_mask(params):
  """True for the leaves weight decay applies to: kernels and embeddings (ndim >= 2).

  One-dimensional leaves are the biases and the BatchNorm/LayerNorm scales and offsets of
  every model here; the rule needs no module names.
  """
  return jax.tree.map(lambda leaf: jnp.ndim(leaf) >= 2, params)


def base_optimizer(opt, schedule):
  """`config.optimizer`'s AdamW or SGD (PyTorch semantics: decay added to the gradient before
  the momentum trace) at `schedule`, with the decay mask of `decay_norm_and_bias`."""
  # A function, not a tree: under multi_transform it sees only its group's leaves.
  mask = None if decays_norm_and_bias(opt) else weight_decay_mask
  if opt.name == "sgd":
    return optax.chain(
      optax.add_decayed_weights(opt.weight_decay, mask),
      optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov),
    )
  return optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=mask)


def create_optimizer(settings, params, lr_fn):
  opt = settings.optimizer
  if opt.backbone_lr_multiplier == 1.0:
    return base_optimizer(opt, lr_fn)
  from proxy_jax.weights import pretrained  # pylint: disable=g-import-not-at-top

  is_head = pretrained.head_mask(params, settings.model.name)
  labels = jax.tree.map(lambda head: "head" if head else "backbone", is_head)
  multiplier = opt.backbone_lr_multiplier
  # multi_transform hands each optimiser only its own leaves (the others are masked out).
  backbone = (
    optax.set_to_zero()
    if multiplier == 0
    else base_optimizer(opt, lambda step: multiplier * lr_fn(step))
  )
  return optax.multi_transform({"head": base_optimizer(opt, lr_fn), "backbone": backbone}, labels)


def init_variables(settings, model, key, pretrained: str | None = None):
  """Fresh variables of `model`, with the weights of `pretrained` (default
  `config.model.pretrained`; "" = none) loaded into them."""
  shape = (1, settings.image_size, settings.image_size, 3)
  variables = model.init({"params": key, "dropout": key}, jnp.zeros(shape, jnp.float32))
  source = settings.model.pretrained if pretrained is None else pretrained
  if source:
    from proxy_jax.weights import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top

    variables = pretrained_lib.load_pretrained(source, settings.model.name, variables)
  return variables


def create_train_state(
  settings, model, key, steps_per_epoch: int, lr_fn: Callable | None = None
) -> TrainState:
  """A fresh state; pass the run's `lr_fn` so the schedule is built once per run."""
  variables = init_variables(settings, model, key)
  lr_fn = lr_fn or learning_rate_schedule(settings, steps_per_epoch)
  return TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=create_optimizer(settings, variables["params"], lr_fn),
    batch_stats=variables.get("batch_stats", {}),
  )
