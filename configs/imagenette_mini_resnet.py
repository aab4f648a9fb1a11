"""The fair-fight regime on imagenette-mini: a residual network that overfits, trained the way the
mixing papers trained their baselines (experiments/README.md, "A fair fight").

  python main.py --config=configs/imagenette_mini_resnet.py --workdir=runs/x
  python main.py --config=configs/imagenette_mini_resnet.py:gpu --workdir=runs/x

`train/` of ../shared/data/imagenette-mini (3,000 photos) is carved into train (2,700) and
validation (300); its `val/` (1,000 photos) is the test split. Paths are relative to the
directory the command runs in; elsewhere pass --config.data.path=DIR/train
--config.data.test_path=DIR/val.

cpu (default): ResNet-18 at base width 16 with the small-image stem, 32 px, stored at 32 px and
  trained on pad-4 random crops + flips (the CIFAR scripts of CutMix, Cutout and SaliencyMix),
  SGD with Nesterov momentum 0.9, weight decay off biases and normalisation, cosine schedule
  after one warm-up epoch, batch 64, 60 epochs. The issue's estimate: about 220 training
  images/s on one core, about 13 minutes per run.
gpu: the same recipe at the ImageNet papers' size: ResNet-18 at its own width (64) with the
  ImageNet stem, 128 px RandomResizedCrop + flip from images stored at 146 px (128 / 0.875),
  bfloat16 compute.

The learning rate and weight decay here are the CIFAR references' (0.1, 5e-4 at batch 128,
lr scaled to 0.05 at batch 64); the studies replace them with the pilot's choice on the
validation split (configs/sweeps/imagenette_mini_pilot.py, proxy_jax/study/pilot.py).
Proxy Attention is off: the arms turn it on.
"""

from configs import default

SIZES = ("cpu", "gpu")


def get_config(size: str = "cpu"):
  if size not in SIZES:
    raise ValueError(f"configs/imagenette_mini_resnet.py:{size}: choose one of {', '.join(SIZES)}")
  config = default.get_config()
  config.data.source = "folder"
  config.data.name = "imagenette_mini"
  config.data.path = "../shared/data/imagenette-mini/train"
  config.data.test_path = "../shared/data/imagenette-mini/val"
  config.model.name = "resnet18"
  config.augment.flip = True
  config.augment.rotation_degrees = 0.0  # In none of the references' baselines.
  config.batch_size = 64
  config.eval_batch_size = 250
  config.num_epochs = 60
  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.decay_norm_and_bias = "false"
  config.optimizer.learning_rate = 0.05
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_epochs = 1.0
  config.proxy.enabled = False
  config.evaluate_train_split = True  # The studies' gate reads it.
  if size == "cpu":
    config.image_size = 32
    config.data.load_size = 32
    config.augment.crop = "pad"
    config.augment.crop_padding = 4
    config.augment.crop_pad_mode = "zero"
    config.model.width = 16
    config.model.small_stem = "true"
    config.dtype = "float32"
  else:
    config.image_size = 128
    config.data.load_size = 146
    config.augment.crop = "random_resized"
    config.augment.crop_scale = (0.08, 1.0)
    config.augment.crop_ratio = (3 / 4, 4 / 3)
    config.model.width = 0
    config.model.small_stem = "false"
    config.dtype = "bfloat16"
    # One checkpoint per run (~45 MB with momentum): 80 runs fit the disk.
    config.keep_checkpoints = 1
  return config
