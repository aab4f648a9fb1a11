"""Each augmentation method's settings as its papers ran them, at small and at large images.

"small" is the CIFAR-size (32 px) from-scratch setting of the method's reference, "large" the
ImageNet-size one (224 px). Every value names where it comes from: a reference repository and
file (and the flag or line), or the paper where no code is public. `None` means that regime
has no published setting; the arm then keeps the library default. The study arms take their
values from here (`arm_overrides`, used by `proxy_jax.study.arms`), and experiments/README.md
shows this table (`python -m proxy_jax.study.settings_table --write` writes it, a test checks
the committed copy).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Setting:
  """One `config.augment` field: its value and source at each regime."""

  field: str
  small: object
  small_source: str
  large: object
  large_source: str
  note: str = ""


@dataclasses.dataclass(frozen=True)
class Method:
  """The fields that select the method (fixed) and its paper settings."""

  select: dict
  settings: tuple
  note: str = ""


REGIMES = ("small", "large")

_MIXUP_CIFAR = "facebookresearch/mixup-cifar10, train.py (`--alpha` default 1; every batch)"
_MIXUP_PAPER = "Zhang et al. 2018, Sec. 3.1 (ImageNet; no public ImageNet code)"
_CUTMIX = "clovaai/CutMix-PyTorch, README.md"
_SALMIX_CIFAR = "afm-shahab-uddin/SaliencyMix, SaliencyMix_CIFAR/saliencymix.py"
_SALMIX_IMAGENET = "afm-shahab-uddin/SaliencyMix, README.md (SaliencyMix-ImageNet/train.py)"
_SNAPMIX = "Shaoli-Huang/SnapMix"
_CUTOUT = "uoguelph-mlrg/Cutout"
_KEEP_PAPER = "Gong et al. 2021 (official code not public)"
_KEEP_UNOFFICIAL = "cjf8899/KeepAugment_Pytorch, util/keep_cutout.py (unofficial)"
_ATTENTIVE = "Walawalkar et al. 2020, Sec. 3 (no official code found)"

METHODS = {
  "mixup": Method(
    {"augment.mix": "mixup"},
    (
      Setting("mix_alpha", 1.0, _MIXUP_CIFAR, 0.2, _MIXUP_PAPER),
      Setting("mix_prob", 1.0, _MIXUP_CIFAR, 1.0, _MIXUP_PAPER),
    ),
  ),
  "cutmix": Method(
    {"augment.mix": "cutmix"},
    (
      Setting(
        "mix_alpha",
        1.0,
        f"{_CUTMIX}, CIFAR-100 command (`--beta 1.0`)",
        1.0,
        f"{_CUTMIX}, ImageNet command (`--beta 1.0`)",
      ),
      Setting(
        "mix_prob",
        0.5,
        f"{_CUTMIX}, CIFAR-100 command (`--cutmix_prob 0.5`)",
        1.0,
        f"{_CUTMIX}, ImageNet command (`--cutmix_prob 1.0`)",
      ),
    ),
  ),
  "saliencymix": Method(
    {"augment.mix": "saliencymix"},
    (
      Setting(
        "mix_alpha",
        1.0,
        f"{_SALMIX_CIFAR} (`--beta` 1.0)",
        1.0,
        f"{_SALMIX_IMAGENET} (`--beta 1.0`)",
      ),
      Setting(
        "mix_prob",
        0.5,
        f"{_SALMIX_CIFAR} (`--salmix_prob` default 0.5)",
        1.0,
        f"{_SALMIX_IMAGENET} (`--salmix_prob 1.0`)",
      ),
      Setting(
        "saliencymix_map",
        "fine_grained",
        f"{_SALMIX_CIFAR} (`saliency_bbox`: StaticSaliencyFineGrained)",
        "fine_grained",
        "afm-shahab-uddin/SaliencyMix, SaliencyMix-ImageNet/train.py (`saliency_bbox`)",
        "the reference hands OpenCV the normalised float tensor, which OpenCV reads as "
        "bytes; the library computes the map on the 8-bit image",
      ),
    ),
    note="the reference centres every box of a batch on one partner's peak; the library on "
    "each example's own partner (the paper's description)",
  ),
  "snapmix": Method(
    {"augment.mix": "snapmix"},
    (
      Setting(
        "mix_alpha",
        1.0,
        f"{_SNAPMIX}, utils/conf.py (`--beta` default 1.0), README from-scratch command",
        5.0,
        f"{_SNAPMIX}, README.md (`--beta 5`, pretrained)",
      ),
      Setting(
        "mix_prob",
        0.5,
        f"{_SNAPMIX}, README.md from scratch (`--prob 0.5`)",
        1.0,
        f"{_SNAPMIX}, utils/conf.py (`--prob` default 1.0, pretrained)",
      ),
      Setting(
        "snapmix_normalize_labels",
        False,
        f"{_SNAPMIX}, utils/mixmethod.py (`snapmix`)",
        False,
        f"{_SNAPMIX}, utils/mixmethod.py (`snapmix`)",
      ),
      Setting(
        "snapmix_cam",
        "reference",
        f"{_SNAPMIX}, utils/mixmethod.py (`get_spm`)",
        "reference",
        f"{_SNAPMIX}, utils/mixmethod.py (`get_spm`)",
      ),
    ),
    note="its papers train on fine-grained sets at 448 px: small = its from-scratch setting, "
    "large = its ImageNet-pretrained one; same-label pairs are not double-weighted",
  ),
  "resizemix": Method(
    {"augment.mix": "resizemix"},
    (
      Setting(
        "resizemix_scale_min",
        0.1,
        "Qin et al. 2020, Sec. 3 (alpha = 0.1)",
        0.1,
        "Qin et al. 2020, Sec. 3 (alpha = 0.1)",
      ),
      Setting(
        "resizemix_scale_max",
        0.8,
        "Qin et al. 2020, Sec. 3 (beta = 0.8)",
        0.8,
        "Qin et al. 2020, Sec. 3 (beta = 0.8)",
      ),
    ),
  ),
  "attentive_cutmix": Method(
    {"augment.mix": "attentive_cutmix"},
    (
      Setting("attentive_grid", 7, _ATTENTIVE, 7, _ATTENTIVE),
      Setting("attentive_top_k", 6, _ATTENTIVE, 6, _ATTENTIVE),
      Setting(
        "saliency_source",
        None,
        f"{_ATTENTIVE}: a frozen ImageNet-pretrained ResNet-50",
        None,
        f"{_ATTENTIVE}: a frozen ImageNet-pretrained ResNet-50",
        "not reproduced: no pretrained weights on this machine (offline); the arms use "
        "the model being trained. With weights, set saliency_source to them (and a "
        "class-agnostic saliency_cam, eigencam)",
      ),
    ),
  ),
  "cutout": Method(
    {"augment.erase": "cutout"},
    (
      Setting(
        "erase_size",
        0.5,
        f"{_CUTOUT}, README.md (`--length 16` of 32, CIFAR-10; CIFAR-100: `--length 8`, 0.25)",
        None,
        "no ImageNet setting (STL-10 at 96 px: `--length 32`)",
      ),
      Setting(
        "erase_prob", 1.0, f"{_CUTOUT}, util/cutout.py (every image)", None, "no ImageNet setting"
      ),
      Setting(
        "erase_fill",
        "paper",
        f"{_CUTOUT}, train.py (Cutout after Normalize: the hole is the mean colour)",
        None,
        "no ImageNet setting",
      ),
    ),
  ),
  "keepaugment": Method(
    {"augment.erase": "cutout", "augment.keep_salient": True},
    (
      Setting(
        "erase_size",
        0.5,
        f"{_KEEP_PAPER}: Cutout's CIFAR-10 16 px",
        None,
        "no ImageNet Cutout setting",
      ),
      Setting(
        "erase_prob", 1.0, f"{_KEEP_UNOFFICIAL} (every image)", None, "no ImageNet Cutout setting"
      ),
      Setting(
        "keep_cutout",
        "selective_cut",
        f"{_KEEP_PAPER}, Sec. 3 (selective-cut)",
        "selective_cut",
        f"{_KEEP_PAPER}, Sec. 3 (selective-cut)",
      ),
      Setting(
        "keep_threshold",
        0.6,
        _KEEP_UNOFFICIAL,
        0.6,
        _KEEP_UNOFFICIAL,
        "on min-max-scaled saliency; the paper redraws without bound, the library "
        "at most keep_tries times",
      ),
    ),
  ),
  "trivialaugment": Method({"augment.policy": "trivialaugment"}, (), note="no settings"),
}


def arm_overrides(method: str, regime: str) -> dict:
  """The study-arm overrides of `method` at `regime`: its selecting fields and every setting
  with a published value there (the others keep the library default)."""
  if regime not in REGIMES:
    raise ValueError(f"regime={regime!r} is invalid: choose one of {', '.join(REGIMES)}")
  entry = METHODS[method]
  overrides = dict(entry.select)
  for setting in entry.settings:
    value = getattr(setting, regime)
    if value is not None:
      overrides[f"augment.{setting.field}"] = value
  return overrides


def _cell(value) -> str:
  return "-" if value is None else f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def table_markdown(library_defaults: dict) -> str:
  """The settings table: one row per method and setting. `library_defaults` maps each
  `config.augment` field to the library's default value (proxy_jax/config/defaults.py)."""
  lines = [
    "| method | setting (`augment.`) | small images (CIFAR) | source | large images "
    "(ImageNet) | source | library default | note |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for name, entry in METHODS.items():
    select = ", ".join(f"`{k.removeprefix('augment.')}={v}`" for k, v in entry.select.items())
    lines.append(f"| **{name}** | {select} | | | | | | {entry.note} |")
    for s in entry.settings:
      lines.append(
        f"| | `{s.field}` | {_cell(s.small)} | {s.small_source} | {_cell(s.large)} | "
        f"{s.large_source} | {_cell(library_defaults[s.field])} | {s.note} |"
      )
  return "\n".join(lines) + "\n"
