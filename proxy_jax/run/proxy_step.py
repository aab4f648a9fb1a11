"""Proxy Attention in training: the schedule, the proxy bank and the proxy step.

A proxy step evaluates the training split, picks a seeded share of the wrongly classified
examples, computes a CAM for each, down-weights the attended pixels (`proxy_transform`, from the library module
`proxy_image`) and
stores the result in the proxy bank (`proxy_bank.py`) under the example's id. From then on training batches use
the proxy *instead of* the original (replaced, never added): the epoch length is unchanged and
validation/test data never pass through the bank.

Sizes: the step predicts and takes its CAMs on the centre crop (side `image_size`) of each
stored training image (side `data.load_size`), as evaluation does. The bank keeps proxies in
the stored space, so a proxy goes through the train step's crop like the original it replaces:
a proxy is its stored image with the centre crop replaced by the transformed crop, and the ring
outside the crop, which the CAM never saw, left as it is (as if its CAM were 0). With
load_size == image_size there is no ring and this is the plain proxy image.
"""

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax import cams, data, models, proxy
from proxy_jax.core import parallel
from proxy_jax.images import preprocess
from proxy_jax.run import dispatch, proxy_rows

# ---------------------------------------------------------------- the schedule


@dataclasses.dataclass(frozen=True)
class Schedule:
  epochs: int
  # Completed-epoch counts at which each proxy step runs, in order (repeats allowed).
  proxy_epochs: tuple[int, ...]


def parse_schedule(schedule: str, num_epochs: int, enabled: bool = True) -> Schedule:
  """'5,p,9,p,4' -> proxy steps after epochs 5 and 14 of 18.

  The epochs must add up to num_epochs, so the baseline (proxy disabled) trains exactly as
  long as the proxy arm; with proxy disabled the schedule is ignored.
  """
  if not enabled:
    return Schedule(num_epochs, ())
  tokens = [t.strip().lower() for t in str(schedule).split(",")]
  if not schedule or not str(schedule).strip() or any(not t for t in tokens):
    raise ValueError(
      f"config.proxy.schedule={schedule!r} is malformed: expected epochs and "
      "'p' separated by commas, e.g. '5,p,9,p,4'"
    )
  done, proxy_epochs = 0, []
  for token in tokens:
    if token == "p":
      proxy_epochs.append(done)
    elif token.isdigit() and int(token) > 0:
      done += int(token)
    else:
      raise ValueError(
        f"config.proxy.schedule={schedule!r} is malformed: {token!r} is "
        "neither a positive number of epochs nor 'p'"
      )
  if not proxy_epochs:
    raise ValueError(
      f"config.proxy.schedule={schedule!r} has no proxy step 'p'; set "
      "config.proxy.enabled=False for a baseline"
    )
  if proxy_epochs[-1] == done:
    raise ValueError(
      f"config.proxy.schedule={schedule!r} ends with a proxy step, which no "
      "training epoch would use"
    )
  if done != num_epochs:
    raise ValueError(
      f"config.proxy.schedule={schedule!r} trains {done} epochs but "
      f"config.num_epochs={num_epochs}; make them agree"
    )
  return Schedule(done, tuple(proxy_epochs))


# ---------------------------------------------------------------- choosing examples


def choose_wrong(wrong_ids, wrong_labels, subset: float, key, class_balanced: bool = False):
  """Seeded draw of ceil(subset * n_wrong) of the wrongly classified ids (sorted).

  Class-balanced draws interleave per-class random orders (first pick of every class, then
  second, ...), so no class takes more than its share while others still have examples.
  """
  wrong_ids, wrong_labels = np.asarray(wrong_ids), np.asarray(wrong_labels)
  count = math.ceil(subset * len(wrong_ids))
  if count == 0:
    return wrong_ids[:0]
  if not class_balanced:
    order = np.asarray(jax.random.permutation(key, len(wrong_ids)))
    return np.sort(wrong_ids[order[:count]])
  classes = np.unique(wrong_labels)
  # Separate keys: folding a sentinel such as -1 into `key` overflows uint32 in current JAX.
  class_key, member_key = jax.random.split(key)
  class_order = np.asarray(jax.random.permutation(class_key, len(classes)))
  ranked = []
  for position, cls in enumerate(classes[class_order]):
    members = np.flatnonzero(wrong_labels == cls)
    members = members[
      np.asarray(jax.random.permutation(jax.random.fold_in(member_key, int(cls)), len(members)))
    ]
    ranked += [(rank, position, index) for rank, index in enumerate(members)]
  ranked.sort()
  return np.sort(wrong_ids[[index for _, _, index in ranked[:count]]])


# ---------------------------------------------------------------- the proxy step
#
# Cost, in units of one evaluation pass E over the training split. Two ways to run a step:
#   two-pass: predict everything (E), then CAMs and proxies of the k chosen examples only
#             (c * k / N * E, where c is the cost of a CAM pass relative to E);
#   fused:    predictions, CAMs and proxies of every example in ONE forward pass (c * E); only
#             for activation-map methods (Grad-CAM family), whose map needs the features once
#             and differentiates only the small head.
# Neither path reads anything back while a pass is dispatched (`dispatch.dispatch`): the device
# runs each pass back to back, then the host reads the predictions, and only the chosen rows'
# proxies and maps cross afterwards, each process reading those its own devices computed
# (gathered on each device, one transfer per device; `proxy_rows`). A pass whose results
# exceed proxy.device_buffer_mb drains its oldest chunks to the host while later ones compute.
# A CAM needs the last feature map in memory, which an evaluation pass never materialises (it is
# pooled on the fly), so c >= 1: measured on XLA:CPU (benchmarks/proxy_step.py) c = 2.0 for the
# tiny CNN at 32 px and 1.0 for ResNet-18 at 64 px. Since k <= subset * N, two-pass costs at
# most 1 + c * subset: the cheaper bound whenever subset <= 1/2 (the thesis uses 0.2, measured
# 1.25-1.31 E), while fused bounds the cost by c whatever the subset.
# The choice depends on the config only, so an interrupted and resumed run takes the same path.
# Multi-pass methods (Score-CAM, SmoothGrad, IG) always use two-pass, as do banked examples whose
# CAM must be of their current proxy (reuse_proxies). Jitted functions are cached by their static
# settings and chunk shapes are bucketed to powers of two, so later steps never recompile.
FUSED_MIN_SUBSET = 0.5


def use_fused_scan(method: str, subset: float) -> bool:
  """Whether the step runs as one fused scan (see the cost note above)."""
  return method in cams.formulas.ACTIVATION_FORMULAS and subset > FUSED_MIN_SUBSET


def buffer_bytes(settings) -> int:
  """The result bytes a pass of the step may hold on the device (`proxy.device_buffer_mb`)."""
  return int(settings.proxy.device_buffer_mb * 1e6)


def dispatch_predictions(
  state, split, batch_size: int, predict_fn, batch_sharding, buffer: int | None = None
) -> dispatch.OnDevice:
  """Eval-mode, unaugmented predictions of every example of `split`, left on the device."""
  variables = models.variables_of(state)
  return dispatch.dispatch(
    lambda chunk: jnp.argmax(predict_fn(state.apply_fn, variables, chunk.inputs["image"]), -1),
    {"image": split.images},
    batch_size,
    sharding=batch_sharding,
    buffer_bytes=buffer,
  )


def predict_labels(
  state, split, batch_size: int, predict_fn, batch_sharding, buffer: int | None = None
) -> np.ndarray:
  """Eval-mode, unaugmented predictions for every example of `split`, in split order."""
  return dispatch_predictions(state, split, batch_size, predict_fn, batch_sharding, buffer).fetch()


def dispatch_scan(state, split, settings, batch_sharding) -> dispatch.OnDevice:
  """The fused scan, left on the device: (predictions, uint8 proxies, uint8 maps) per example.

  The caller reads the predictions, then only the chosen examples' proxies and maps
  (`OnDevice.fetch`). The device holds every example's proxy and map meanwhile, N * S * S * 4
  bytes for N crops of side S (1,437 digits at 224 px: 0.29 GB), up to `proxy.device_buffer_mb`:
  beyond it the oldest chunks are drained while later ones compute, keeping their predictions
  and the proxies and maps of their wrong rows only (no other row can be chosen).
  """
  proxy_settings = settings.proxy
  scan = proxy.fused_scan_fn(
    state.apply_fn, proxy_settings.cam_method, proxy_settings.mode, _cam_options(settings)
  )
  variables = models.variables_of(state)
  threshold, weight = jnp.float32(proxy_settings.threshold), jnp.float32(proxy_settings.weight)
  arrays = {"image": split.images}
  if proxy_settings.cam_target == "label":
    arrays["label"] = split.labels

  def apply(chunk):
    return scan(variables, chunk.inputs["image"], chunk.inputs.get("label"), threshold, weight)

  return dispatch.dispatch(
    apply,
    arrays,
    settings.eval_batch_size,
    sharding=batch_sharding,
    buffer_bytes=buffer_bytes(settings),
    drain=_drain_wrong(split.labels),
  )


def _drain_wrong(labels):
  """A fused scan's drain: a chunk's predictions (all of them, in every process), and the
  proxies and maps of the wrong rows this process owns (no other row can be chosen)."""

  def drain(chunk, outputs):
    positions = chunk.rows[: chunk.valid]
    predicted = np.array(chunk.fetch(outputs[0]))  # A copy, not a view of the device array.
    wrong = predicted != labels[positions]
    mine = positions[chunk.owned()[: chunk.valid] & wrong]
    if len(mine):  # All own rows cross (one read per device, none queued behind later chunks).
      mine, (out, cam) = chunk.fetch_local(outputs[1:])
      keep = wrong[np.searchsorted(positions, mine)]
      mine, out, cam = mine[keep], out[keep], cam[keep]
    else:
      out, cam = (np.zeros((0, *x.shape[1:]), x.dtype) for x in outputs[1:])
    return (
      dispatch.Drained(positions, predicted),
      dispatch.Drained(mine, out),
      dispatch.Drained(mine, cam),
    )

  return drain


def _cam_options(settings) -> tuple:
  return (
    ("chunk_size", int(settings.cams.chunk_size)),
    ("smooth_sigma", float(settings.cams.smooth_sigma)),
    ("gradcampp_eps", float(settings.cams.gradcampp_eps)),
  )


@dataclasses.dataclass
class ProxyStepResult:
  """What one proxy step computed; the caller stores the proxies and logs the rest.

  Each process holds the images of the chosen examples its own devices computed (`local_ids`),
  never another's: at scale a step's proxies do not fit one host. The ids and figures are
  global (the same in every process).
  """

  ids: np.ndarray  # Ids (training-split positions) of all chosen examples, sorted.
  owned: tuple  # Per process, the chosen ids whose proxies it computed (sorted); ids' partition.
  originals: np.ndarray  # uint8 centre crops the CAMs were taken on (current proxies if reused).
  proxies: np.ndarray  # uint8 proxies at the stored side, what the bank keeps.
  maps: np.ndarray  # float32 CAMs in [0, 1] of the centre crops.
  wrong: int  # Wrongly classified training examples.
  seconds: float
  changes: dict  # How much the transform changed the chosen crops, over all processes.

  @property
  def local_ids(self) -> np.ndarray:
    """This process's list of `owned`: the ids of the rows of originals, proxies and maps."""
    return self.owned[jax.process_index()]


def change_counts(originals, proxies) -> np.ndarray:
  """int64 [pixels, changed pixels, channel values, summed absolute change in levels] of uint8
  (k, S, S, C) crops before and after the transform: integers, so processes can add theirs."""
  originals, proxies = np.asarray(originals), np.asarray(proxies)
  if originals.shape != proxies.shape:
    raise ValueError(f"originals {originals.shape} and proxies {proxies.shape} differ in shape")
  difference = np.abs(originals.astype(np.int16) - proxies.astype(np.int16))
  changed = int((difference.max(axis=-1) > 0).sum()) if difference.size else 0
  pixels = int(np.prod(originals.shape[:-1])) if originals.size else 0
  return np.array([pixels, changed, difference.size, difference.sum(dtype=np.int64)], np.int64)


def figures_of_counts(counts) -> dict:
  """`records.ProxyStepRecord`'s change fields from `change_counts` (summed over processes):
  the changed share of the pixels, the mean absolute change of the changed pixels' channel
  values and of all of them, in 0-255 levels (None when nothing was chosen, or nothing changed
  for the second). A pixel is changed when any of its channels is."""
  pixels, changed, values, summed = (int(c) for c in counts)
  if not pixels:
    return {"changed_pixel_share": None, "changed_mean_abs": None, "mean_abs_change": None}
  channels = values // pixels
  return {
    "changed_pixel_share": changed / pixels,
    # An unchanged pixel adds nothing to the sum, so the changed pixels' values hold all of it.
    "changed_mean_abs": summed / (changed * channels) if changed else None,
    "mean_abs_change": summed / values,
  }


def change_figures(originals, proxies) -> dict:
  """How much the transform changed the chosen images (the manipulation check of a proxy
  step), from their crops before and after (the proxies' centre crops: the ring outside them is
  never changed); `figures_of_counts` of `change_counts`."""
  return figures_of_counts(change_counts(originals, proxies))


def run_proxy_step(
  state, split, bank, settings, key, *, predict_fn, batch_sharding=None
) -> ProxyStepResult:
  """One proxy step over the training split; reads `bank` (for reuse_proxies), never changes it.

  With reuse_proxies the CAM of a banked example is taken on its current proxy, so the caller
  must store the result (`ProxyBank.store_shares`) after this returns, even with clear_every_step.
  Every process reads and keeps only the chosen examples its devices compute.
  """
  started = time.time()
  proxy_settings = settings.proxy
  if batch_sharding is None:
    batch_sharding = parallel.shardings(parallel.make_mesh())[1]
  view = data.eval_view(split, settings.image_size)
  if use_fused_scan(proxy_settings.cam_method, proxy_settings.subset):
    scan = dispatch_scan(state, view, settings, batch_sharding)
    predictions = scan.select(lambda out: out[0]).fetch()
    candidates = scan.select(lambda out: out[1:])  # (proxies, maps), still on the devices.
  else:
    predictions = predict_labels(
      state, view, settings.eval_batch_size, predict_fn, batch_sharding, buffer_bytes(settings)
    )
    candidates = None
  wrong = np.flatnonzero(predictions != split.labels)
  chosen = choose_wrong(
    wrong, split.labels[wrong], proxy_settings.subset, key, proxy_settings.class_balanced
  )
  rows = _proxies_of(
    state,
    split,
    bank,
    chosen,
    predictions,
    candidates,
    settings,
    jax.random.fold_in(key, 1),
    batch_sharding,
  )
  crops = preprocess.center_crop(rows.proxies, settings.image_size)
  counts = parallel.sum_over_processes(change_counts(rows.originals, crops))
  return ProxyStepResult(
    chosen.astype(np.int32),
    rows.owned,
    rows.originals,
    rows.proxies,
    rows.maps,
    int(len(wrong)),
    time.time() - started,
    figures_of_counts(counts),
  )


def _proxies_of(
  state, split, bank, chosen, predictions, candidates, settings, noise_key, batch_sharding
) -> proxy_rows.Local:
  """This process's (source crops, uint8 stored-side proxies, float maps) of the chosen
  examples, in id order, and which process holds which ids.

  Read from the fused scan's `candidates` (on the devices) where it has them: each process reads
  the rows its own devices scanned. Computed here (in chunks, each process reading its share)
  for multi-pass CAM methods and for banked examples whose CAM must be of the current proxy
  (reuse_proxies). The proxies of the centre crops are pasted back into their stored images
  (module docstring).
  """
  reuse = settings.proxy.reuse_proxies
  recompute = np.ones(len(chosen), bool)
  if candidates is not None:
    recompute = bank.holds(chosen) if reuse else np.zeros(len(chosen), bool)
  parts = []
  if (~recompute).any():
    scanned = chosen[~recompute]
    mine, (out, cam) = candidates.fetch_local(scanned)
    stored = proxy_rows.stored_images(split, bank if reuse else None, mine)
    parts.append(proxy_rows.Rows(scanned, candidates.owners(scanned), mine, stored, out, cam))
  if recompute.any():
    again = chosen[recompute]
    targets = predictions if settings.proxy.cam_target == "predicted" else split.labels
    reader = proxy_rows.ChosenCrops(split, bank if reuse else None, again, settings.image_size)
    passed = _dispatch_proxies(state, reader, targets[again], settings, noise_key, batch_sharding)
    mine, (out, cam) = passed.fetch_local(np.arange(len(again)))
    owner = passed.owners(np.arange(len(again)))
    parts.append(proxy_rows.Rows(again, owner, again[mine], reader.stored(mine), out, cam))
  return proxy_rows.merged(parts, split, settings.image_size)


def _dispatch_proxies(
  state, images, targets, settings, noise_key, batch_sharding
) -> dispatch.OnDevice:
  """CAMs and proxies in chunks whose size is a power of two (at most a few compilations).

  Each chunk is split over the mesh like a training batch (its size rounded up to a multiple
  of the device count), so every device computes only its share of the CAMs. All chunks are
  dispatched before any result is read back, unless they exceed `proxy.device_buffer_mb` (the
  oldest are drained to the host meanwhile, each process keeping its own rows).
  """
  proxy_settings = settings.proxy
  proxy_fn = proxy.make_proxy_fn(
    state.apply_fn,
    proxy_settings.cam_method,
    proxy_settings.threshold,
    proxy_settings.weight,
    proxy_settings.mode,
    dict(_cam_options(settings)),
  )
  variables = models.variables_of(state)

  def apply(chunk):
    return proxy_fn(
      variables,
      chunk.inputs["image"],
      chunk.inputs["target"],
      jax.random.fold_in(noise_key, chunk.start),
    )

  return dispatch.dispatch(
    apply,
    {"image": images, "target": targets.astype(np.int32)},
    int(settings.cams.chunk_size),
    sharding=batch_sharding,
    power_of_two=True,
    buffer_bytes=buffer_bytes(settings),
    drain=_drain_own,
  )


def _drain_own(chunk, outputs):
  """A drain that keeps this process's rows of every result leaf (`Chunk.fetch_local`)."""
  positions, rows = chunk.fetch_local(outputs)
  return jax.tree.map(lambda x: dispatch.Drained(positions, x), rows)
