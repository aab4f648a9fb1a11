"""Training and evaluation: the state, the pure steps, and the epoch/proxy-step loop.

`train_and_evaluate(config, workdir)` is the only entry point `main.py` calls. It validates the
config before any compute, loads the fixed split, builds a sharded train state, resumes from the
latest checkpoint if there is one, and alternates training epochs with proxy steps as
`config.proxy.schedule` says. Steps are module-level pure functions jitted once with the state
donated; data parallelism is a `jax.sharding.Mesh` over all devices with the batch split on
its "data" axis (one device is just a mesh of one).
"""

import functools
import logging as std_logging
import os
import shutil
import time
from typing import Any

from absl import logging
from clu import metric_writers, periodic_actions
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from proxy_jax import checkpoints, config_lib, data, images_grid, models, preprocess, proxy
from proxy_jax import errors
from proxy_jax.parallel import make_mesh, prefetch, shardings, to_global
from proxy_jax.io_utils import atomic_write_json


class TrainState(train_state.TrainState):
  batch_stats: Any


# ---------------------------------------------------------------- model and optimiser


def create_model(config, num_classes: int):
  overrides = {"width": config.model.width} if config.model.get("width") else {}
  return models.create(config.model.name, num_classes, config.image_size, config.dtype,
                       small_stem=config.model.small_stem, **overrides)


def learning_rate_schedule(config, steps_per_epoch: int):
  opt = config.optimizer
  total = max(1, config.num_epochs * steps_per_epoch)
  if opt.schedule == "constant":
    return optax.constant_schedule(opt.learning_rate)
  if opt.schedule == "onecycle":
    return optax.cosine_onecycle_schedule(total, opt.learning_rate)
  warmup = min(int(opt.warmup_epochs * steps_per_epoch), total - 1)
  return optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, warmup, total)


def create_optimizer(config, params, lr_fn):
  opt = config.optimizer

  def adamw(schedule):
    return optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)

  if opt.backbone_lr_multiplier == 1.0:
    return adamw(lr_fn)
  from proxy_jax import pretrained  # pylint: disable=g-import-not-at-top
  is_head = pretrained.head_mask(params, config.model.name)
  labels = jax.tree.map(lambda head: "head" if head else "backbone", is_head)
  multiplier = opt.backbone_lr_multiplier
  backbone = (optax.set_to_zero() if multiplier == 0
              else adamw(lambda step: multiplier * lr_fn(step)))
  return optax.multi_transform({"head": adamw(lr_fn), "backbone": backbone}, labels)


def init_variables(config, model, key):
  shape = (1, config.image_size, config.image_size, 3)
  variables = model.init({"params": key, "dropout": key}, jnp.zeros(shape, jnp.float32))
  if config.model.pretrained:
    from proxy_jax import pretrained  # pylint: disable=g-import-not-at-top
    variables = pretrained.load_pretrained(config.model.pretrained, config.model.name,
                                           variables)
  return variables


def create_train_state(config, model, key, steps_per_epoch: int) -> TrainState:
  variables = init_variables(config, model, key)
  lr_fn = learning_rate_schedule(config, steps_per_epoch)
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           tx=create_optimizer(config, variables["params"], lr_fn),
                           batch_stats=variables.get("batch_stats", {}))


# ---------------------------------------------------------------- steps


def cross_entropy(logits, labels, mask, label_smoothing: float = 0.0):
  """Masked mean cross-entropy, always in float32."""
  logits = logits.astype(jnp.float32)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  per_example = optax.softmax_cross_entropy(logits, targets)
  return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def summed_metrics(logits, labels, mask, loss):
  """Sums (not means) so batches and hosts add up exactly; padded rows have mask 0."""
  count = jnp.sum(mask)
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  return {"loss": loss * count,
          "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
          "correct_top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
          "count": count}


def variables_of(state):
  return {"params": state.params, "batch_stats": state.batch_stats}


def train_step(state, batch, key, *, flip: bool, rotation_degrees: float,
               label_smoothing: float):
  augment_key, dropout_key = jax.random.split(key)
  inputs = preprocess.train_inputs(batch["image"], augment_key, flip, rotation_degrees)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, inputs, train=True,
        mutable=["batch_stats"], rngs={"dropout": dropout_key})
    loss = cross_entropy(logits, batch["label"], batch["mask"], label_smoothing)
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads,
                                batch_stats=updates.get("batch_stats", state.batch_stats))
  return state, summed_metrics(logits.astype(jnp.float32), batch["label"], batch["mask"], loss)


def eval_step(state, batch):
  logits = state.apply_fn(variables_of(state), preprocess.eval_inputs(batch["image"]))
  loss = cross_entropy(logits, batch["label"], batch["mask"])
  return summed_metrics(logits, batch["label"], batch["mask"], loss)


def predict_step(state, images_uint8):
  return state.apply_fn(variables_of(state), preprocess.eval_inputs(images_uint8))


def make_train_step(config, replicated=None):
  step = functools.partial(train_step, flip=config.augment.flip,
                           rotation_degrees=config.augment.rotation_degrees,
                           label_smoothing=config.label_smoothing)
  return jax.jit(step, donate_argnums=0,
                 out_shardings=replicated if replicated is not None else None)


def make_eval_step():
  return jax.jit(eval_step)


def make_predict_step():
  return jax.jit(predict_step)


# ---------------------------------------------------------------- evaluation


def evaluate(state, split: data.Split, batch_size: int, eval_fn, batch_sharding) -> dict:
  totals = None
  for batch in data.batches(split, batch_size):
    metrics = eval_fn(state, to_global(batch, batch_sharding))
    totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
  return finalize_metrics(jax.device_get(totals))


def finalize_metrics(totals: dict) -> dict:
  count = max(float(totals["count"]), 1.0)
  return {"loss": float(totals["loss"]) / count,
          "accuracy": float(totals["correct"]) / count,
          "top5": float(totals["correct_top5"]) / count}


# ---------------------------------------------------------------- the loop


def _quiet_orbax():
  """Orbax logs every save step at INFO through absl; keep its warnings, drop the chatter."""
  logging.get_absl_logger().addFilter(lambda record: record.levelno >= std_logging.WARNING
                    or "orbax" not in record.pathname)


def _setup_host(config, workdir):
  _quiet_orbax()
  # TensorFlow only feeds TFDS and summaries: keep it off any accelerator memory.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  if config.distributed:
    jax.distributed.initialize()
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise errors.WorkdirError(f"--workdir {workdir}: cannot create it ({error.strerror})") from error
  config_lib.write_or_check_resolved(config, workdir)


def _resolve_batch_size(config, num_classes):
  if config.batch_size == -1:
    from proxy_jax import batch_size as batch_size_finder  # pylint: disable=g-import-not-at-top
    found = batch_size_finder.find_batch_size(config, num_classes)
    # The finder sizes one device's step; the global batch is split over all of them.
    devices = jax.device_count()
    with config.unlocked():
      config.batch_size = max(devices, found // devices * devices)
    logging.info("Batch size finder chose %d (%d device(s)).", config.batch_size, devices)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  config_lib.validate(config)
  fresh = not os.path.exists(workdir)
  try:
    _setup_host(config, workdir)
    run = Run(config, workdir)
  except errors.UserError:
    # Refused before training (e.g. an empty split): leave no config.json behind that would
    # refuse the corrected config in the same workdir.
    if fresh:
      shutil.rmtree(workdir, ignore_errors=True)
    raise
  try:
    return run.train()
  finally:
    run.close()


class Run:
  """State of one training run; kept as an object only to share setup between its phases."""

  def __init__(self, config, workdir):
    self.config, self.workdir = config, workdir
    self.start_time = time.time()
    self.dataset = data.load_dataset(config, workdir)
    num_classes = len(self.dataset.class_names)
    _resolve_batch_size(config, num_classes)
    devices = jax.device_count()
    for field in ("batch_size", "eval_batch_size"):
      if config[field] % devices:
        raise errors.ConfigError(f"config.{field}={config[field]} is not divisible by the "
                                 f"{devices} devices")
    self.mesh = make_mesh()
    self.replicated, self.batch_sharding = shardings(self.mesh)
    self.model = create_model(config, num_classes)
    if jax.process_index() == 0:
      atomic_write_json(os.path.join(workdir, "classes.json"), self.dataset.class_names)
    self.steps_per_epoch = data.num_batches(len(self.dataset.train), config.batch_size)
    root = jax.random.key(config.seed)
    state = create_train_state(config, self.model, jax.random.fold_in(root, 0),
                               self.steps_per_epoch)
    self.state = jax.device_put(state, self.replicated)
    self.step_key = jax.random.fold_in(root, 1)
    self.proxy_key = jax.random.fold_in(root, 2)
    self.lr_fn = learning_rate_schedule(config, self.steps_per_epoch)
    self.train_fn = make_train_step(config, self.replicated)
    self.eval_fn = make_eval_step()
    self.predict_fn = make_predict_step()
    self.bank = proxy.ProxyBank()
    self.schedule = proxy.parse_schedule(config.proxy.schedule, config.num_epochs,
                                         config.proxy.enabled)
    self.meta = {"epoch": 0, "proxy_steps_done": 0, "history": [], "proxy_steps": [],
                 "best": {"val_accuracy": -1.0, "epoch": -1}, "bank_size": 0,
                 "elapsed_s": 0.0}
    self.ckpt = checkpoints.RunCheckpoints(workdir, config.keep_checkpoints)
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0)

  def close(self):
    self.ckpt.close()
    self.writer.flush()
    self.writer.close()

  def restore(self) -> bool:
    latest = self.ckpt.latest_epoch()
    if latest is None:
      return False
    self.state, self.meta, bank_arrays = self.ckpt.restore(latest, self.state)
    self.bank = proxy.ProxyBank.from_arrays(bank_arrays)
    logging.info("Resumed from %s at epoch %d (%d proxy steps done, bank of %d).",
                 self.ckpt.directory, self.meta["epoch"], self.meta["proxy_steps_done"],
                 len(self.bank))
    return True

  def train(self) -> dict:
    config = self.config
    resumed = self.restore()
    summary_path = os.path.join(self.workdir, "summary.json")
    if resumed and self.meta["epoch"] >= config.num_epochs and os.path.exists(summary_path):
      logging.info("%s is already complete; nothing to do.", self.workdir)
      return config_lib.read_json(summary_path)
    if not resumed:
      self.write_run_header()
    self.elapsed_before = self.meta["elapsed_s"]
    self.first_step, self.session_start = int(self.state.step), time.time()
    self.progress = periodic_actions.ReportProgress(
        num_train_steps=config.num_epochs * self.steps_per_epoch, writer=self.writer)
    # Proxy steps due before the first epoch of this session (schedule starting with "p").
    self.run_due_proxy_steps(self.meta["epoch"])
    for epoch in range(self.meta["epoch"], config.num_epochs):
      self.train_epoch(epoch)
      self.meta["epoch"] = epoch + 1
      # The proxy steps at this boundary run before the save, so a checkpoint never sits
      # between an epoch and the proxy step that follows it.
      proxied = self.run_due_proxy_steps(epoch + 1)
      self.meta["elapsed_s"] = self.elapsed_before + time.time() - self.start_time
      if ((epoch + 1) % config.checkpoint_every_epochs == 0 or proxied
          or epoch + 1 == config.num_epochs):
        self.save()
    return self.finish()

  def write_run_header(self):
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
               for k, v in config_lib.flatten(self.config).items()}
    self.writer.write_hparams(hparams)
    batch = next(data.batches(self.dataset.train, min(self.config.batch_size, 16),
                              data.epoch_order(len(self.dataset.train), self.config.seed, 0)))
    inputs = jax.jit(preprocess.train_inputs, static_argnums=(2, 3))(
        batch["image"], jax.random.key(0), self.config.augment.flip,
        self.config.augment.rotation_degrees)
    pictures = np.clip(np.asarray(preprocess.denormalize(inputs)), 0, 1)
    self.writer.write_images(0, {"train/examples": images_grid.grid(pictures)[None]})

  def save(self):
    self.meta["bank_size"] = len(self.bank)
    self.ckpt.save(self.meta["epoch"], self.state, self.meta, self.bank.to_arrays())

  def run_due_proxy_steps(self, epochs_done: int) -> bool:
    ran = False
    while (self.meta["proxy_steps_done"] < len(self.schedule.proxy_epochs)
           and self.schedule.proxy_epochs[self.meta["proxy_steps_done"]] == epochs_done):
      index = self.meta["proxy_steps_done"]
      key = jax.random.fold_in(self.proxy_key, index)
      self.bank, record = proxy.run_proxy_step(
          self.state, self.dataset.train, self.bank, self.config, key,
          predict_fn=self.predict_fn, writer=self.writer, workdir=self.workdir,
          step=int(self.state.step), index=index, batch_sharding=self.batch_sharding)
      record["epoch"] = epochs_done
      self.meta["proxy_steps"].append(record)
      self.meta["proxy_steps_done"] = index + 1
      ran = True
    return ran

  def train_epoch(self, epoch: int):
    config, split = self.config, self.dataset.train
    started = time.time()
    order = data.epoch_order(len(split), config.seed, epoch)
    swap = self.bank.swap if len(self.bank) else None
    totals = None
    for batch in prefetch(data.batches(split, config.batch_size, order, swap=swap)):
      step = int(self.state.step)
      key = jax.random.fold_in(self.step_key, step)
      self.state, metrics = self.train_fn(self.state, to_global(batch, self.batch_sharding), key)
      totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
      self.progress(step + 1)
      if (step + 1) % config.log_every_steps == 0:
        self.log_progress(epoch, step + 1)
    train_metrics = finalize_metrics(jax.device_get(totals))
    seconds = time.time() - started
    val = evaluate(self.state, self.dataset.val, config.eval_batch_size, self.eval_fn,
                   self.batch_sharding)
    self.record_epoch(epoch, train_metrics, val, seconds)

  def log_progress(self, epoch, steps_done):
    total = self.config.num_epochs * self.steps_per_epoch
    rate = (steps_done - self.first_step) / max(time.time() - self.session_start, 1e-9)
    eta = (total - steps_done) / max(rate, 1e-9)
    logging.info("epoch %d/%d step %d/%d, ETA %s", epoch + 1, self.config.num_epochs,
                 steps_done, total, time.strftime("%H:%M:%S", time.gmtime(eta)))

  def record_epoch(self, epoch, train_metrics, val, seconds):
    step = int(self.state.step)
    lr = float(self.lr_fn(step - 1))
    images_per_s = len(self.dataset.train) / seconds
    row = {"epoch": epoch + 1, "train_loss": train_metrics["loss"],
           "train_accuracy": train_metrics["accuracy"], "val_loss": val["loss"],
           "val_accuracy": val["accuracy"], "val_top5": val["top5"], "learning_rate": lr,
           "epoch_seconds": seconds, "images_per_second": images_per_s}
    self.meta["history"].append(row)
    if val["accuracy"] > self.meta["best"]["val_accuracy"]:
      self.meta["best"] = {"val_accuracy": val["accuracy"], "epoch": epoch + 1}
    self.writer.write_scalars(step, {
        "train/loss": row["train_loss"], "train/accuracy": row["train_accuracy"],
        "val/loss": val["loss"], "val/accuracy": val["accuracy"], "val/top5": val["top5"],
        "learning_rate": lr, "epoch_seconds": seconds, "images_per_second": images_per_s})
    total_epochs = self.config.num_epochs
    remaining = (total_epochs - epoch - 1) * seconds
    logging.info("epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f top5 %.4f | "
                 "lr %.2e | %.1fs, %.0f img/s | ETA %s", epoch + 1, total_epochs,
                 row["train_loss"], row["train_accuracy"], val["loss"], val["accuracy"],
                 val["top5"], lr, seconds, images_per_s,
                 time.strftime("%H:%M:%S", time.gmtime(remaining)))

  def finish(self) -> dict:
    self.ckpt.manager.wait_until_finished()
    test = None
    if self.dataset.test is not None:
      test = evaluate(self.state, self.dataset.test, self.config.eval_batch_size,
                      self.eval_fn, self.batch_sharding)
      self.writer.write_scalars(int(self.state.step), {f"test/{k}": v for k, v in test.items()})
    final = dict(self.meta["history"][-1])
    summary = {
        "config": self.config.to_dict(), "final": final, "best": self.meta["best"],
        "test": test, "num_epochs": self.config.num_epochs,
        "wall_time_s": self.elapsed_before + time.time() - self.start_time,
        "proxy_steps": self.meta["proxy_steps"], "bank_size": len(self.bank),
        "skipped_files": self.dataset.skipped_files,
        "num_examples": {"train": len(self.dataset.train), "val": len(self.dataset.val),
                         "test": len(self.dataset.test) if self.dataset.test else 0},
        "history": self.meta["history"]}
    if jax.process_index() == 0:
      atomic_write_json(os.path.join(self.workdir, "summary.json"), summary)
    logging.info("Done: val accuracy %.4f (best %.4f at epoch %d), test %s.",
                 final["val_accuracy"], self.meta["best"]["val_accuracy"],
                 self.meta["best"]["epoch"], test)
    return summary

