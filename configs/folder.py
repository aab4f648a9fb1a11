"""Any class-per-subfolder image directory: `--config.data.path=DIR` (required).

A plain trainer by default, so any epoch count works for a first look; add Proxy Attention with
`--config.proxy.enabled=True` (schedule 3,p,3,p,4 over the 10 epochs).

Optional `--config.data.test_path=DIR2` with the same layout is the test split, e.g.
`--config.data.path=../shared/data/imagenette-mini/train
 --config.data.test_path=../shared/data/imagenette-mini/val`.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = "folder"
  config.data.name = "folder"
  config.data.path = ""
  config.data.test_path = ""
  config.image_size = 64
  config.augment.flip = True
  config.model.name = "resnet18"
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 10
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.05
  config.proxy.enabled = False
  config.proxy.schedule = "3,p,3,p,4"
  config.proxy.subset = 0.2
  return config
