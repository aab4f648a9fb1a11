"""Stanford Dogs (TFDS `stanford_dogs`, 120 breeds), ResNet-50 at 224 px: the thesis's setting.

Proxy Attention with the thesis's final choice: schedule 5,p,9,p,9,p,9,p,4 (36 epochs), 20% of
the wrong examples per step, threshold 0.85, weight 0.2, Grad-CAM++, bank kept across steps.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = "tfds"
  config.data.name = "stanford_dogs"
  config.data.train_split = "train"
  config.data.test_split = "test"
  config.data.val_fraction = 0.1
  config.image_size = 224
  # Stored at 256 px (data.load_size auto: 224 / 0.875); training takes torchvision's
  # RandomResizedCrop (area 8-100%, ratio 3/4-4/3) to 224, evaluation the 224 centre crop.
  config.augment.crop = "random_resized"
  config.augment.flip = True
  config.augment.rotation_degrees = 20.0
  config.model.name = "resnet50"
  config.model.pretrained = "timm/resnet50.a1_in1k"
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 36
  config.label_smoothing = 0.1
  config.optimizer.learning_rate = 3e-4
  config.optimizer.weight_decay = 0.05
  config.optimizer.warmup_epochs = 2.0
  config.proxy.enabled = True
  config.proxy.schedule = "5,p,9,p,9,p,9,p,4"
  config.proxy.subset = 0.2
  config.proxy.threshold = 0.85
  config.proxy.weight = 0.2
  config.proxy.cam_method = "gradcampp"
  config.proxy.clear_every_step = False
  config.cams.chunk_size = 128
  return config
