"""Optimisers: AdamW and SGD (Nesterov) against hand-rolled NumPy updates, weight-decay mask."""

import jax
import numpy as np
import pytest

from proxy_jax.config import fields as config_fields, checks as config_lib
from proxy_jax.run import model_state
from tests.conftest import make_tiny_config

STEPS = 3


def _tree():
  """A dense kernel (decayed), its bias and a norm scale (1-D: decayed only if asked)."""
  rng = np.random.default_rng(0)
  return {
    "dense": {
      "kernel": rng.normal(size=(2, 3)).astype(np.float32),
      "bias": rng.normal(size=(3,)).astype(np.float32),
    },
    "norm": {"scale": rng.normal(size=(3,)).astype(np.float32)},
  }


def _grads(step):
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), _tree())


def _optax_run(config, lr_fn):
  params = _tree()
  tx = model_state.create_optimizer(config, params, lr_fn)
  state = tx.init(params)
  for step in range(STEPS):
    updates, state = tx.update(_grads(step), state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return params


def _decayed(path: str, decay_norm_and_bias: bool) -> bool:
  return path == "dense/kernel" or decay_norm_and_bias


def _numpy_sgd(lr_fn, wd, momentum, nesterov, decay_all):
  """torch.optim.SGD.step (dampening 0) transcribed: decay into the gradient, then momentum."""
  params = {f"{m}/{n}": v.astype(np.float64) for m, d in _tree().items() for n, v in d.items()}
  buffers = {k: None for k in params}
  for step in range(STEPS):
    grads = {f"{m}/{n}": v for m, d in _grads(step).items() for n, v in d.items()}
    for key, p in params.items():
      g = grads[key] + (wd * p if _decayed(key, decay_all) else 0.0)
      buffers[key] = g if buffers[key] is None else momentum * buffers[key] + g
      g = g + momentum * buffers[key] if nesterov else buffers[key]
      params[key] = p - lr_fn(step) * g
  return params


def _numpy_adamw(lr_fn, wd, b1, b2, decay_all, eps=1e-8):
  """Loshchilov & Hutter's AdamW as optax runs it: decoupled decay scaled by the rate."""
  params = {f"{m}/{n}": v.astype(np.float64) for m, d in _tree().items() for n, v in d.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  nu = {k: np.zeros_like(v) for k, v in params.items()}
  for step in range(STEPS):
    grads = {f"{m}/{n}": v for m, d in _grads(step).items() for n, v in d.items()}
    for key, p in params.items():
      mu[key] = b1 * mu[key] + (1 - b1) * grads[key]
      nu[key] = b2 * nu[key] + (1 - b2) * grads[key] ** 2
      m_hat, v_hat = mu[key] / (1 - b1 ** (step + 1)), nu[key] / (1 - b2 ** (step + 1))
      update = m_hat / (np.sqrt(v_hat) + eps) + (wd * p if _decayed(key, decay_all) else 0.0)
      params[key] = p - lr_fn(step) * update
  return params


def _flat(tree):
  return {f"{m}/{n}": np.asarray(v) for m, d in tree.items() for n, v in d.items()}


def _config(**overrides):
  config = make_tiny_config(**{"optimizer.weight_decay": 0.1, **overrides})
  config_lib.validate(config)
  return config


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("decay", ["auto", "true"])
def test_sgd_matches_torch_sgd_transcribed(nesterov, decay):
  config = _config(
    **{
      "optimizer.name": "sgd",
      "optimizer.nesterov": nesterov,
      "optimizer.decay_norm_and_bias": decay,
      "optimizer.momentum": 0.9,
      "optimizer.schedule": "warmup_cosine",
      "optimizer.warmup_epochs": 1.0,
      "num_epochs": 2,
    }
  )
  lr_fn = model_state.learning_rate_schedule(config, steps_per_epoch=2)
  got = _flat(_optax_run(config, lr_fn))
  want = _numpy_sgd(lambda s: float(lr_fn(s)), 0.1, 0.9, nesterov, decay_all=decay == "true")
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # "auto" leaves the bias and the norm scale undecayed: they differ from the decay-all run.
  other = _numpy_sgd(lambda s: float(lr_fn(s)), 0.1, 0.9, nesterov, decay_all=decay != "true")
  assert not np.allclose(got["dense/bias"], other["dense/bias"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["dense/kernel"], other["dense/kernel"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("decay,decay_all", [("auto", True), ("false", False), ("TRUE", True)])
def test_adamw_matches_transcription_with_its_mask(decay, decay_all):
  config = _config(
    **{
      "optimizer.decay_norm_and_bias": decay,
      "optimizer.schedule": "constant",
      "optimizer.learning_rate": 0.01,
    }
  )
  lr_fn = model_state.learning_rate_schedule(config, steps_per_epoch=1)
  got = _flat(_optax_run(config, lr_fn))
  want = _numpy_adamw(lambda s: 0.01, 0.1, 0.9, 0.999, decay_all)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_sgd_mask_holds_under_a_backbone_learning_rate_multiplier():
  """With multi_transform each group's optimiser sees only its own leaves; the mask still
  spares the 1-D ones and the backbone moves at the multiplied rate."""
  config = _config(
    **{
      "optimizer.name": "sgd",
      "optimizer.schedule": "constant",
      "optimizer.learning_rate": 0.5,
      "optimizer.backbone_lr_multiplier": 0.5,
      "optimizer.momentum": 0.0,
    }
  )
  params = {
    "conv": {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)},
    "fc": {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)},
  }
  tx = model_state.create_optimizer(config, params, lambda step: 0.5)
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  # Zero gradient: the update is -lr * wd * p on decayed leaves only.
  assert float(updates["fc"]["kernel"][0, 0]) == pytest.approx(-0.5 * 0.1)
  assert float(updates["conv"]["kernel"][0, 0]) == pytest.approx(-0.25 * 0.1)
  assert float(np.abs(updates["fc"]["bias"]).max()) == 0.0
  assert float(np.abs(updates["conv"]["bias"]).max()) == 0.0


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("optimizer.name", "adam", "optimizer.name='adam'.*adamw, sgd"),
    ("optimizer.momentum", 1.0, r"optimizer.momentum=1.0.*\[0, 1\)"),
    ("optimizer.nesterov", "yes", "optimizer.nesterov='yes'.*True or False"),
    (
      "optimizer.decay_norm_and_bias",
      "maybe",
      "optimizer.decay_norm_and_bias='maybe'.*auto, true, false",
    ),
  ],
)
def test_bad_optimizer_fields_are_refused(field, value, message):
  config = make_tiny_config()
  with config.ignore_type():  # A sweep or a config.json may hold any type.
    config_fields.set_field(config, field, value)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)
