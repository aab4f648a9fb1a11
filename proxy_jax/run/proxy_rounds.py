"""The proxy steps of a run, as its schedule says: each due step runs (`proxy_step`), its
proxies go into the bank under the step's label, and its record joins the run's progress and
its logs."""

import jax

from proxy_jax.run import proxy_bank, proxy_step, records, reporting


def run_due(
  setup, state, bank: proxy_bank.ProxyBank, progress: records.RunProgress, eta: reporting.Eta
) -> bool:
  """Runs the proxy steps due after `progress.epoch` epochs (the schedule of `setup`, the
  run's `train.Setup`), stores their proxies in `bank`, records and logs them; whether any ran."""
  settings, due = setup.settings, setup.schedule.proxy_epochs
  ran = False
  while progress.proxy_steps_done < len(due) and due[progress.proxy_steps_done] == progress.epoch:
    index = progress.proxy_steps_done
    result = proxy_step.run_proxy_step(
      state,
      setup.dataset.train,
      bank,
      settings,
      jax.random.fold_in(setup.proxy_key, index),
      predict_fn=setup.predict_fn,
      batch_sharding=setup.batch_sharding,
    )
    bank.store_shares(
      result.owned,
      result.proxies,
      replace_all=settings.proxy.clear_every_step,
      label=f"step-{index:04d}",
    )
    record = records.ProxyStepRecord(
      index=index,
      epoch=progress.epoch,
      wrong=result.wrong,
      chosen=len(result.ids),
      bank_size=len(bank),
      seconds=result.seconds,
      **result.changes,
    )
    progress.add_proxy_step(record)
    step = progress.epoch * setup.steps_per_epoch
    names = setup.dataset.class_names
    captions = [
      f"image {int(i)}, label {names[int(setup.dataset.train.labels[i])]}"
      for i in result.local_ids[: settings.proxy.num_logged_images]
    ]
    reporting.log_proxy_step(
      setup.writer,
      setup.workdir,
      step,
      record,
      result,
      settings.proxy.num_logged_images,
      eta.seconds_left(step),
      captions,
      settings.proxy.cam_method,
    )
    ran = True
  return ran
