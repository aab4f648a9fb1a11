"""CIFAR-100 (TFDS `cifar100`, 100 classes, 32 px photos), ResNet-18 with the small-image stem."""

from configs import dogs


def get_config():
  # Same model, optimiser and proxy settings as the thesis's Stanford Dogs run.
  config = dogs.get_config()
  config.data.name = "cifar100"
  config.data.test_split = "test"
  config.image_size = 32
  # CIFAR images are 32 px: stored as they are, trained on the CIFAR scripts' pad-4 random crop
  # and flip (CutMix, Cutout, SaliencyMix), without the rotation of the 224 px configs.
  config.data.load_size = 32
  config.augment.crop = "pad"
  config.augment.crop_padding = 4
  config.augment.crop_pad_mode = "zero"
  config.augment.flip = True
  config.augment.rotation_degrees = 0.0
  config.model.name = "resnet18"
  config.model.pretrained = ""  # ImageNet weights do not fit 32 px inputs well.
  config.batch_size = 128
  config.eval_batch_size = 512
  config.optimizer.learning_rate = 1e-3
  return config
