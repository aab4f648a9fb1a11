"""The proxy step as it ran before its passes stayed on the device (main at 692443a).

Every chunk is read back to the host before the next one is dispatched (`dispatch.apply_chunked`),
and the fused scan's proxies and maps come back for every row. The same jitted functions on
the same chunks, so `proxy_step.run_proxy_step` must give bit-identical results: only where and when
the results cross to the host changed. Used by tests/test_proxy_device.py and by the two-process
test in tests/test_proxy.py.
"""

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax import data, models, proxy
from proxy_jax.images import preprocess
from proxy_jax.run import dispatch, proxy_step


def _predictions_and_candidates(state, view, config, predict_fn, sharding):
  """(predictions, (proxies, maps) of every row or None), read back chunk by chunk."""
  settings, variables = config.proxy, models.variables_of(state)
  if not proxy_step.use_fused_scan(settings.cam_method, settings.subset):
    predictions = dispatch.apply_chunked(
      lambda c: jnp.argmax(predict_fn(state.apply_fn, variables, c.inputs["image"]), -1),
      {"image": view.images},
      config.eval_batch_size,
      sharding=sharding,
    )
    return predictions, None
  scan = proxy.fused_scan_fn(
    state.apply_fn, settings.cam_method, settings.mode, proxy_step._cam_options(config)
  )  # pylint: disable=protected-access
  arrays = {"image": view.images}
  if settings.cam_target == "label":
    arrays["label"] = view.labels
  threshold, weight = jnp.float32(settings.threshold), jnp.float32(settings.weight)
  predictions, out, cam = dispatch.apply_chunked(
    lambda c: scan(variables, c.inputs["image"], c.inputs.get("label"), threshold, weight),
    arrays,
    config.eval_batch_size,
    sharding=sharding,
  )
  return predictions, (out, cam)


def _recomputed(state, sources, targets, config, noise_key, sharding):
  settings = config.proxy
  proxy_fn = proxy.make_proxy_fn(
    state.apply_fn,
    settings.cam_method,
    settings.threshold,
    settings.weight,
    settings.mode,
    dict(proxy_step._cam_options(config)),
  )  # pylint: disable=protected-access
  variables = models.variables_of(state)
  return dispatch.apply_chunked(
    lambda c: proxy_fn(
      variables, c.inputs["image"], c.inputs["target"], jax.random.fold_in(noise_key, c.start)
    ),
    {"image": sources, "target": targets.astype(np.int32)},
    int(config.cams.chunk_size),
    sharding=sharding,
    power_of_two=True,
  )


def reference_step(state, split, bank, config, key, predict_fn, sharding) -> dict:
  """{"ids", "originals", "proxies", "maps", "wrong"} as `ProxyStepResult` holds them."""
  settings = config.proxy
  view = data.eval_view(split, config.image_size)
  predictions, candidates = _predictions_and_candidates(state, view, config, predict_fn, sharding)
  wrong = np.flatnonzero(predictions != split.labels)
  chosen = proxy_step.choose_wrong(
    wrong, split.labels[wrong], settings.subset, key, settings.class_balanced
  )
  stored = np.asarray(split.images[chosen])
  if settings.reuse_proxies:
    stored = bank.swap(chosen, stored)
  sources = np.ascontiguousarray(preprocess.center_crop(stored, config.image_size))
  out = np.zeros_like(sources)
  cam = np.zeros(sources.shape[:3], np.uint8)
  recompute = np.ones(len(chosen), bool)
  if candidates is not None:
    recompute = bank.holds(chosen) if settings.reuse_proxies else ~recompute
    out[~recompute] = candidates[0][chosen[~recompute]]
    cam[~recompute] = candidates[1][chosen[~recompute]]
  if recompute.any():
    targets = predictions if settings.cam_target == "predicted" else split.labels
    out[recompute], cam[recompute] = _recomputed(
      state,
      sources[recompute],
      targets[chosen[recompute]],
      config,
      jax.random.fold_in(key, 1),
      sharding,
    )
  return {
    "ids": chosen.astype(np.int32),
    "originals": sources,
    "proxies": preprocess.paste_center(stored, out),
    "maps": cam.astype(np.float32) / 255.0,
    "wrong": len(wrong),
  }


def assert_identical(result, expected: dict) -> None:
  """A `ProxyStepResult` equals `reference_step`'s dict bit for bit: its ids, its change figures
  (summed over processes), and the rows of the ids this process holds; the processes' lists
  partition the chosen ids."""
  assert result.wrong == expected["wrong"]
  assert result.ids.dtype == expected["ids"].dtype
  np.testing.assert_array_equal(result.ids, expected["ids"])
  np.testing.assert_array_equal(np.sort(np.concatenate(result.owned)), expected["ids"])
  assert len(result.owned) == jax.process_count()
  np.testing.assert_array_equal(result.local_ids, result.owned[jax.process_index()])
  rows = np.searchsorted(expected["ids"], result.local_ids)
  for name in ("originals", "proxies", "maps"):
    got = getattr(result, name)
    assert got.dtype == expected[name].dtype, name
    np.testing.assert_array_equal(got, expected[name][rows], err_msg=name)
  crops = preprocess.center_crop(expected["proxies"], expected["originals"].shape[1])
  assert result.changes == proxy_step.change_figures(expected["originals"], crops)
