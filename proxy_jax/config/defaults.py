"""Embedded offline default: scikit-learn's bundled handwritten digits, tiny CNN, short proxy run.

Every number of a run lives here; the other configs import this one and override fields.
`python main.py` uses it and needs no network. It is part of the package (an installed proxy_jax
has it); configs/default.py re-exports it.
"""

import os

import ml_collections

# This file, for the flags whose default config is a path (main, batch_size, sweep).
PATH = os.path.abspath(__file__)


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Multi-host: call jax.distributed.initialize() (the launcher sets its environment).
  config.distributed = False

  _add_data(config)
  config.image_size = 32
  _add_augment(config)
  _add_mixing(config)
  _add_model(config)

  # -1 = the largest batch whose train step fits the device (python -m proxy_jax.batch_size).
  config.batch_size = 64
  # Batch-size finder: largest size tried (0 = 256 on CPU, 4096 where the device reports a
  # memory limit) and the share of device memory a step may use.
  config.batch_size_ceiling = 0
  config.batch_size_memory_fraction = 0.9
  config.eval_batch_size = 256
  config.num_epochs = 20
  config.label_smoothing = 0.0
  # After training, evaluate the final model on the training split too (eval mode, no
  # augmentation; one pass over it): summary.json's train_split, a study's gate.
  config.evaluate_train_split = True

  _add_optimizer(config)
  _add_proxy(config)
  _add_cams(config)

  # JAX's persistent compilation cache, shared by every run on this machine: a trial whose
  # programs were compiled before reads them instead of compiling again ("" = no cache).
  config.compilation_cache_dir = "~/.cache/proxy_jax/jax_compilation"
  config.checkpoint_every_epochs = 1
  # Also save every this many steps within an epoch (the newest kept; 0 = only at epoch ends):
  # for epochs long enough that losing one to an interruption hurts.
  config.checkpoint_every_steps = 0
  config.keep_checkpoints = 3
  # Epochs longer than this get a progress line (images/s, ETA) this often within them.
  config.log_every_seconds = 20.0
  config.num_logged_images = 16
  return config


def _add_data(config):
  """The dataset, its split and its decode cache."""
  config.data = ml_collections.ConfigDict()
  # "digits" (bundled with scikit-learn), "tfds" (config.data.name) or "folder" (config.data.path).
  config.data.source = "digits"
  config.data.name = "digits"
  config.data.path = ""
  # Optional folder with the same layout, used as the test split.
  config.data.test_path = ""
  # Flat folders: regular expression on the file name whose first group is the label.
  config.data.label_regex = ""
  config.data.tfds_data_dir = ""
  config.data.train_split = "train"
  # Dataset test split, or "" to carve data.test_fraction of the training data instead.
  config.data.test_split = ""
  # The train/val(/test) split is drawn from this seed, not config.seed, so runs with different
  # training seeds (and the baseline and proxy arms) share one fixed split.
  config.data.split_seed = 0
  config.data.val_fraction = 0.1
  config.data.test_fraction = 0.1
  # Only for smoke runs: cap the number of training-pool examples (0 = all).
  config.data.max_examples = 0
  # Side of the stored images (shorter side resized to it, centre square); training crops them
  # to image_size (augment.crop), evaluation sees their centre crop (torchvision's Resize +
  # CenterCrop). -1 = auto: round(image_size / 0.875) for folders and TFDS (256 for 224),
  # image_size for the digits. The resolved value is recorded in config.json.
  config.data.load_size = -1
  # Decoded, resized uint8 images are cached here, keyed by their source, files and stored side,
  # and shared by every run that stores the same images; "" = <workdir>/cache.
  config.data.cache_dir = "~/.cache/proxy_jax/decoded"
  config.data.decode_workers = 8
  # "cache": decode every image once into the cache above and train from it (memory-mapped);
  # "stream": image folders are packed once (their files' bytes, ArrayRecord shards in the
  # cache folder) and each batch is decoded as it is needed, by grain in stream_workers
  # processes; "auto": the cache while it would hold at most max_cache_gb, else the stream.
  # The resolved value is recorded in config.json (docs/data.md).
  config.data.pipeline = "auto"
  config.data.max_cache_gb = 32.0
  config.data.stream_workers = 2
  # Where a streamed split's random resized crop runs: "workers" cuts each box from the file's
  # own pixels in the stream's workers (JPEGs decoded at a reduced DCT scale where the box
  # allows: PIL draft), the same boxes the step would draw; "step" crops the stored squares in
  # the train step, as the cache does (the stream then equals the cache bit for bit).
  config.data.stream_crop = "workers"


def _add_augment(config):
  """Flip, rotation, policies (RandAugment, TrivialAugment, AugMix) and erasing."""
  config.augment = ml_collections.ConfigDict()
  # Crop from the stored image (data.load_size) to image_size (proxy_jax/augment/crop.py):
  # "random_resized" (torchvision RandomResizedCrop), "pad" (pad-k random crop) or "center"
  # (the evaluation view; with load_size == image_size the image as stored).
  config.augment.crop = "center"
  # random_resized: area share and aspect-ratio (w/h, log-uniform) ranges of the box.
  config.augment.crop_scale = (0.08, 1.0)
  config.augment.crop_ratio = (3 / 4, 4 / 3)
  # pad: pixels added on each side, "zero" (torchvision's constant 0) or "reflect".
  config.augment.crop_padding = 4
  config.augment.crop_pad_mode = "zero"
  # Mirrored digits are different symbols (or none): no flips for the default data.
  config.augment.flip = False
  config.augment.rotation_degrees = 20.0
  # Policy (proxy_jax/augment/policy.py): "none", "randaugment", "trivialaugment" or "augmix".
  config.augment.policy = "none"
  # RandAugment: ops per image and their magnitude bin (torchvision's 0..30 scale).
  config.augment.randaugment_num_ops = 2
  config.augment.randaugment_magnitude = 9
  # AugMix (reference defaults): chains, ops per chain (-1 = random 1..3), level cap (1..10),
  # Dirichlet/Beta concentration.
  config.augment.augmix_width = 3
  config.augment.augmix_depth = -1
  config.augment.augmix_severity = 3
  config.augment.augmix_alpha = 1.0
  # AugMix's Jensen-Shannon consistency loss over (clean, two AugMix views), and its weight.
  config.augment.augmix_jsd = False
  config.augment.augmix_jsd_weight = 12.0
  # Erasing (proxy_jax/augment/erase.py): "none", "cutout", "random_erasing", "gridmask",
  # "hide_and_seek"; erase_prob = share of images erased (RandomErasing's p).
  config.augment.erase = "none"
  config.augment.erase_prob = 0.5
  # Cutout box side as a fraction of the image side.
  config.augment.erase_size = 0.5
  # RandomErasing: (min, max) erased area share and (min, max) aspect ratio h/w (Zhong et al.).
  config.augment.erase_area = (0.02, 0.4)
  config.augment.erase_aspect = (0.3, 3.3)
  # GridMask: erased square side as a share of the grid unit (its ImageNet setting).
  config.augment.gridmask_ratio = 0.6
  # Hide-and-Seek: grid cells per side and the probability each cell is hidden.
  config.augment.hide_grid = 4
  config.augment.hide_prob = 0.5
  # What erased pixels become: "paper" (each method's reference: the normalisation mean colour
  # for Cutout, GridMask and Hide-and-Seek, noise for RandomErasing), "dataset_mean", "zero"
  # (black), "mean" (per image and channel) or "noise" (uniform).
  config.augment.erase_fill = "paper"


def _add_mixing(config):
  """Mixing, its saliency maps, KeepAugment and what proxied examples skip."""
  # Mixing (proxy_jax/augment/mix.py): "none", a method, or a comma list from which each batch
  # draws one (timm's switch): mixup, cutmix, resizemix, saliencymix, attentive_cutmix, snapmix.
  config.augment.mix = "none"
  # lambda ~ Beta(mix_alpha, mix_alpha) for mixup, cutmix, saliencymix and snapmix.
  config.augment.mix_alpha = 1.0
  # Share of batches that are mixed at all.
  config.augment.mix_prob = 1.0
  # ResizeMix: the partner is shrunk by a side scale drawn uniformly from this range (paper).
  config.augment.resizemix_scale_min = 0.1
  config.augment.resizemix_scale_max = 0.8
  # Attentive CutMix pastes the partner's top_k cells of a grid x grid CAM grid (paper: 7, 6).
  config.augment.attentive_grid = 7
  config.augment.attentive_top_k = 6
  # SaliencyMix's map: "fine_grained" (OpenCV's StaticSaliencyFineGrained, its reference's)
  # or "spectral_residual".
  config.augment.saliencymix_map = "fine_grained"
  # SnapMix's CAM-weighted label weights need not sum to 1 (its reference); True rescales them.
  config.augment.snapmix_normalize_labels = False
  # SnapMix's CAM: "reference" (the raw class map, min-shifted and sum-normalised by SnapMix
  # itself) or "relu_minmax" (ReLU and min-max first, as this library's other CAM users).
  config.augment.snapmix_cam = "reference"
  # CAM of the guided mixes: "current" (the model being trained, in the same step), a trained
  # workdir, or pretrained weights (then saliency_cam must be class-agnostic: eigencam).
  config.augment.saliency_source = "current"
  config.augment.saliency_cam = "gradcam"
  # KeepAugment: policy and erasing paste back each image's most salient box (vanilla-gradient
  # saliency of the current model), of side keep_size times the image side.
  config.augment.keep_salient = False
  config.augment.keep_size = 0.5
  # KeepAugment with Cutout: "selective_cut" (its paper: redraw the box while its mean
  # min-max-scaled saliency is at least keep_threshold, at most keep_tries draws) or
  # "paste_back" (cut anywhere, then paste the salient box back, as for policies).
  config.augment.keep_cutout = "selective_cut"
  config.augment.keep_threshold = 0.6
  config.augment.keep_tries = 10
  # Proxied examples skip policy, erasing and mixing (crop, flip and rotation still apply).
  config.augment.skip_proxies = False


def _add_model(config):
  """The architecture, its initial weights and the compute dtype."""
  config.model = ml_collections.ConfigDict()
  config.model.name = "tiny_cnn"
  # "auto" = small-image stem at 64 px or less; "true" / "false" force it.
  config.model.small_stem = "auto"
  # Base channel count of CNNs (0 = the architecture's own: 64 for ResNet/VGG, 32 for tiny_cnn).
  config.model.width = 0
  # "" = random init; a .safetensors path or a hub name (see README, transfer learning).
  config.model.pretrained = ""
  # Compute dtype: "bfloat16" keeps float32 params, loss, softmax and CAM maths (our AMP);
  # "auto" = bfloat16 on GPU/TPU, float32 on CPU, so CPU runs compute exactly as in float32.
  # The value a run used is recorded as dtype_resolved in config.json and summary.json.
  config.dtype = "auto"


def _add_optimizer(config):
  """The optimiser and its learning-rate schedule."""
  config.optimizer = ml_collections.ConfigDict()
  # "adamw" or "sgd" (PyTorch's: decay added to the gradient, then the momentum trace).
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  # SGD only: momentum and Nesterov's variant (the from-scratch recipes of the mixing papers).
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  # Weight decay on biases and normalisation scales/offsets (1-D parameters): "auto" = no for
  # SGD (as the references), yes for AdamW (optax.adamw's default); "true" / "false".
  config.optimizer.decay_norm_and_bias = "auto"
  # "warmup_cosine", "onecycle" or "constant".
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_epochs = 1.0
  # Fine-tuning: multiplier on the backbone learning rate (0 freezes it); 1 = one rate.
  config.optimizer.backbone_lr_multiplier = 1.0


def _add_proxy(config):
  """Proxy Attention: which examples are replaced, how and when."""
  config.proxy = ml_collections.ConfigDict()
  config.proxy.enabled = True
  # Training epochs and proxy steps ("p"); the epochs must add up to num_epochs.
  config.proxy.schedule = "8,p,6,p,6"
  config.proxy.subset = 1.0
  config.proxy.threshold = 0.85
  config.proxy.weight = 0.2
  # "seed", "blended", "mean", "max", "min", "zero" or "one"; see proxy.proxy_transform.
  config.proxy.mode = "seed"
  config.proxy.cam_method = "gradcampp"
  # "predicted" or "label".
  config.proxy.cam_target = "predicted"
  config.proxy.reuse_proxies = False
  config.proxy.clear_every_step = False
  config.proxy.class_balanced = False
  config.proxy.num_logged_images = 8
  # Megabytes of pass results (predictions, proxies, maps) a proxy step may hold on the device;
  # beyond it the oldest chunks are read back while later ones compute (proxy.dispatch_scan).
  config.proxy.device_buffer_mb = 1024.0


def _add_cams(config):
  """CAM computation (the proxy step, the logged maps)."""
  config.cams = ml_collections.ConfigDict()
  # Images per CAM call; bounds device memory during a proxy step.
  config.cams.chunk_size = 256
  config.cams.smooth_sigma = 0.0
  # Grad-CAM++ alpha denominator + eps: 0 = the paper's formula, 1e-6 = pytorch-grad-cam's.
  config.cams.gradcampp_eps = 0.0
