"""The study's design: the fixed comparisons the report draws, the earlier study's published table, and
mmsegmentation's published Cityscapes results for the models of ``config/cityscapes-mmseg.yaml``.

Backbones are compared under one head (PSPNet's PPM, as in the earlier study), context modules on one backbone
(ResNet18) in the findings. The paired differences tested (:func:`fixed_pairs`) are the backbone pairs below, every
pair of heads on each backbone the study runs several heads on (:func:`head_pairs`; a head run only as a variant,
like the mmsegmentation studies' ``aspp_deeplabv3``, through that run), and MobileNetV3 against MobileNetV2; in a
study with distillation, each distilled run against its plain counterpart and against its teacher
(:func:`distillations`). A run in none of these pairs is named as untested in the report. The rows, figures and
pairs run over the catalog (:mod:`segmodels.models.catalog`), so a backbone or head registered at run time joins its
comparison.
:mod:`segmodels.study.stats` does not import the report: ``segmodels compare`` and the report's results pass it
:func:`fixed_pairs`.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

from segmodels.models import catalog
from segmodels.study.matrix import expand_runs
from segmodels.study.schema import StudyConfig, effective_norm

__all__ = [
    "BACKBONE_HEAD",
    "BACKBONE_PAIRS",
    "BASELINE_HEAD",
    "CONTEXT_BACKBONE",
    "DEPTH_STEPS",
    "DISTILLATION",
    "EARLIER_DEVICE",
    "DATASET_NAMES",
    "EARLIER_LABEL_SET",
    "EARLIER_STUDY",
    "MMSEG_HEAD_OPTIONS",
    "MMSEG_PROTOCOL",
    "MOBILE",
    "NEWER_MOBILE",
    "PUBLISHED",
    "SPEED_REFERENCE",
    "Distillation",
    "backbone_models",
    "compared_with_earlier",
    "context_models",
    "dataset_label",
    "distillations",
    "fixed_pairs",
    "head_pairs",
    "mmseg_differences",
    "not_compared",
    "on_context_backbone",
    "under_backbone_head",
]

BACKBONE_HEAD = "ppm"  # the head under which the backbones are compared
CONTEXT_BACKBONE = "resnet18"  # the backbone on which the context modules (heads) are compared
BASELINE_HEAD = "fcn"  # the head without a context module, what the others' gain is measured from
SPEED_REFERENCE = "resnet50"  # the backbones' speed is given relative to this one
DEPTH_STEPS = (("resnet18", "resnet50"), ("resnet50", "resnet101"))  # deeper ResNets, step by step
MOBILE = ("resnet50", "mobilenetv2")  # the mobile backbone against the ResNet it replaces
NEWER_MOBILE = ("mobilenetv3", "mobilenetv2")  # the newer mobile backbone against the older
DISTILLATION = "distillation"  # the group of a distilled run's comparisons
# Backbone differences a − b (mIoU points) under BACKBONE_HEAD.
BACKBONE_PAIRS = (
    ("resnet50", "resnet18"),
    ("resnet101", "resnet50"),
    ("resnet101", "resnet18"),
    ("resnet50", "mobilenetv2"),
    ("resnet18", "mobilenetv2"),
    # the same of the ResNet-V1c backbones (config/cityscapes-mmseg.yaml)
    ("resnet50c", "resnet18c"),
    ("resnet101c", "resnet50c"),
    ("resnet101c", "resnet18c"),
    ("resnet50c", "mobilenetv2"),
    ("resnet18c", "mobilenetv2"),
)

# The earlier study's published table (PSPNet on Cityscapes at 1024×512, NVIDIA 2080Ti), as printed.
# "miou_per_speed" is its own column, kept to show where it departs from its formula mIoU / ms × 10.
EARLIER_DEVICE = "NVIDIA 2080Ti"
EARLIER_STUDY: dict[str, dict[str, float]] = {
    "resnet18-ppm": {"miou": 62.89, "macc": 71.05, "allacc": 93.36, "latency_ms": 34, "miou_per_speed": 18.5},
    "resnet50-ppm": {"miou": 68.97, "macc": 76.67, "allacc": 94.52, "latency_ms": 79, "miou_per_speed": 8.7},
    "resnet101-ppm": {"miou": 71.07, "latency_ms": 183, "miou_per_speed": 5.45},
    "mobilenetv2-ppm": {"miou": 59.25, "latency_ms": 22, "miou_per_speed": 25.17},
    "mobilenetv3-ppm": {"miou": 56.82},
    "resnet18-aspp": {"miou": 62.09, "macc": 71.08, "allacc": 93.34},
    "resnet18-ocr": {"miou": 61.86, "macc": 70.87, "allacc": 93.31},
}

# The label set (the packed manifest's ``label_set``) of the earlier study's and mmsegmentation's published numbers:
# only a study on the same label set is set beside them.
EARLIER_LABEL_SET = "cityscapes"
# How the report names a dataset by its label set; another label set by the config's dataset name.
DATASET_NAMES = {"cityscapes": "Cityscapes", "voc": "Pascal VOC", "ade20k": "ADE20K"}


def dataset_label(label_set: str, num_classes: int, dataset: str) -> str:
    """The study's dataset as the report names it: "Pascal VOC (21 classes)"."""
    return f"{DATASET_NAMES.get(label_set, dataset)} ({num_classes} classes)"


def compared_with_earlier(label_set: str) -> bool:
    """Whether the earlier study's and mmsegmentation's published numbers are comparable: the same label set."""
    return label_set == EARLIER_LABEL_SET


def not_compared(label: str) -> str:
    """The one sentence that says why a study on another label set has no comparison with published numbers."""
    return (f"This study is on {label}; the earlier study and mmsegmentation's published numbers are on "
            f"{DATASET_NAMES[EARLIER_LABEL_SET]}, so they are not compared.")  # fmt: skip

# mmsegmentation's published single-scale Cityscapes val mIoU (its model zoo: configs/pspnet, configs/deeplabv3,
# configs/fcn and configs/mobilenet_v2 README.md), 512×1024 crops, 80k iterations, batch 8, whole-image inference,
# keyed by the run names of config/cityscapes-mmseg.yaml. "v1c": mmsegmentation's ResNetV1c (deep stem) backbone,
# the config's resnet*c; "v1b": its ResNetV1b (torchvision's stem and ImageNet weights); each with its config's name.
# OCR is left out: mmsegmentation publishes it on HRNet and on ResNet101 at batch 16 only.
PUBLISHED: dict[str, dict[str, tuple[float, str]]] = {
    "resnet18c-ppm": {"v1c": (74.87, "pspnet_r18-d8_512x1024_80k_cityscapes"),
                     "v1b": (74.23, "pspnet_r18b-d8_512x1024_80k_cityscapes")},
    "resnet50c-ppm": {"v1c": (78.55, "pspnet_r50-d8_512x1024_80k_cityscapes"),
                     "v1b": (78.22, "pspnet_r50b-d8_512x1024_80k_cityscapes")},
    "resnet101c-ppm": {"v1c": (79.76, "pspnet_r101-d8_512x1024_80k_cityscapes"),
                      "v1b": (79.69, "pspnet_r101b-d8_512x1024_80k_cityscapes")},
    "mobilenetv2-ppm": {"v1c": (70.23, "pspnet_m-v2-d8_512x1024_80k_cityscapes")},
    "resnet18c-aspp_deeplabv3": {"v1c": (76.70, "deeplabv3_r18-d8_512x1024_80k_cityscapes"),
                                "v1b": (76.26, "deeplabv3_r18b-d8_512x1024_80k_cityscapes")},
    "resnet50c-aspp_deeplabv3": {"v1c": (79.32, "deeplabv3_r50-d8_512x1024_80k_cityscapes"),
                                "v1b": (79.63, "deeplabv3_r50b-d8_512x1024_80k_cityscapes")},
    "resnet101c-aspp_deeplabv3": {"v1c": (80.20, "deeplabv3_r101-d8_512x1024_80k_cityscapes"),
                                 "v1b": (80.01, "deeplabv3_r101b-d8_512x1024_80k_cityscapes")},
    "mobilenetv2-aspp_deeplabv3": {"v1c": (73.84, "deeplabv3_m-v2-d8_512x1024_80k_cityscapes")},
    "resnet18c-fcn": {"v1c": (71.11, "fcn_r18-d8_512x1024_80k_cityscapes"),
                     "v1b": (70.24, "fcn_r18b-d8_512x1024_80k_cityscapes")},
    "resnet50c-fcn": {"v1c": (73.61, "fcn_r50-d8_512x1024_80k_cityscapes"),
                     "v1b": (75.65, "fcn_r50b-d8_512x1024_80k_cityscapes")},
    "resnet101c-fcn": {"v1c": (75.13, "fcn_r101-d8_512x1024_80k_cityscapes"),
                      "v1b": (77.37, "fcn_r101b-d8_512x1024_80k_cityscapes")},
    "mobilenetv2-fcn": {"v1c": (61.54, "fcn_m-v2-d8_512x1024_80k_cityscapes")},
}  # fmt: skip
# The settings under which a run is compared with PUBLISHED (dotted key → value): mmsegmentation's protocol, every
# setting that changes the number (data, model, optimizer, schedule, loss, augmentation, precision, scoring); the
# head's options per model are MMSEG_HEAD_OPTIONS. Settings that change only speed (channels_last, compile) or that
# the values here switch off (warmup_ratio without warm-up, the distillation weights without a teacher) are not in it.
MMSEG_PROTOCOL: dict[str, object] = {
    "data.source": "cityscapes",
    "data.size": [1024, 2048],
    "model.output_stride": 8,
    "model.pretrained": "imagenet",
    "model.norm": "sync",  # its norm_cfg SyncBN (train.sync_bn, the earlier spelling, is read as it)
    "model.aux": True,
    "model.bn_momentum": 0.1,
    "model.head_dropout": "channel",
    "train.iterations": 80000,
    "train.batch_size": 8,
    # one forward pass per GPU batch: micro-batches would have BatchNorm normalise over fewer images
    "train.accumulate": 1,
    "train.micro_batch": None,
    "train.crop_size": [512, 1024],
    "train.scale_range": [0.5, 2.0],
    "train.optimizer": "sgd",
    "train.lr": 0.01,
    "train.momentum": 0.9,
    "train.weight_decay": 0.0005,
    "train.no_decay": "none",
    "train.poly_power": 0.9,
    "train.min_lr": 1e-4,
    "train.warmup_iters": 0,
    "train.head_lr_mult": 1.0,
    "train.aux_weight": 0.4,
    "train.loss_average": "all",
    "train.cat_max_ratio": 0.75,
    "train.contrast_center": "zero",
    "train.distill_teacher": None,
    "train.amp": False,
    "evaluate.full_resolution": True,
    "evaluate.sliding": False,
    "evaluate.flip": False,
    "evaluate.scales": [1.0],
    "evaluate.amp": False,
}
# The head options of each PUBLISHED model's mmsegmentation config that differ from this study's defaults (the rest
# of them are mmsegmentation's): PSPHead, ASPPHead and FCNHead at 512 channels (R-18: 128), dropout 0.1 before the
# classifier; PSPHead's 512 channels per pooling branch on MobileNetV2's 320; ASPPHead's dilations (1, 12, 24, 36)
# with image pooling and no dropout after the projection.
_DEEPLABV3 = {"rates": [1, 12, 24, 36], "image_pool": True, "channels": 512, "project_dropout": 0.0, "dropout": 0.1}
MMSEG_HEAD_OPTIONS: dict[str, dict[str, object]] = {
    "resnet18c-ppm": {"channels": 128},
    "mobilenetv2-ppm": {"bin_channels": 512},
    "resnet18c-aspp_deeplabv3": {**_DEEPLABV3, "channels": 128},
    "resnet50c-aspp_deeplabv3": _DEEPLABV3,
    "resnet101c-aspp_deeplabv3": _DEEPLABV3,
    "mobilenetv2-aspp_deeplabv3": _DEEPLABV3,
    "resnet18c-fcn": {"channels": 128},
}


def _plain(value: object) -> object:
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _head_options(name: str, options: dict[str, object]) -> dict[str, object]:
    """Every option of the run's head, the defaults filled in (so that an option set to its default is no
    difference)."""
    defaults = catalog.head(catalog.arch_of(catalog.pair_of(name))[1]).options
    return {k: _plain(v) for k, v in {**{k: d for k, (_, d) in defaults.items()}, **options}.items()}


def mmseg_differences(cfg: StudyConfig) -> list[str]:
    """The settings on which a (run's) config departs from mmsegmentation's protocol, as ``key=value``; [] at the
    protocol: the keys of MMSEG_PROTOCOL and, for a run's own config (one model), its head's options against
    MMSEG_HEAD_OPTIONS."""
    differences = []
    for key, want in MMSEG_PROTOCOL.items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if key == "model.norm":
            value = effective_norm(cfg)
        if value != want:
            differences.append(f"{key}={value}")
    if len(cfg.models) == 1 and isinstance(name := cfg.models[0], str) and name in PUBLISHED:
        want = _head_options(name, MMSEG_HEAD_OPTIONS.get(name, {}))
        have = _head_options(name, cfg.model.head_options)
        differences += [f"model.head_options.{k}={have[k]}" for k in have if have[k] != want.get(k)]
    return differences


def under_backbone_head(backbone: str) -> str:
    """``"resnet50"`` → ``"resnet50-ppm"``: the backbone's model in the backbone comparison."""
    return f"{backbone}-{BACKBONE_HEAD}"


def on_context_backbone(head: str) -> str:
    """``"aspp"`` → ``"resnet18-aspp"``: the head's model in the context-module comparison."""
    return f"{CONTEXT_BACKBONE}-{head}"


def backbone_models() -> list[str]:
    """Every backbone of the catalog under the comparison's head, in study order."""
    return [under_backbone_head(b) for b in catalog.backbones()]


def context_models() -> list[str]:
    """Every head of the catalog on the comparison's backbone, in study order."""
    return [on_context_backbone(h) for h in catalog.heads()]


class Distillation(NamedTuple):
    """A run of the study trained with a teacher, and what the report compares it with."""

    student: str
    plain: str | None  # the same architecture trained without a teacher (see distillations), None when absent
    teacher: str | None  # the teacher when it is a run of the study, None for a checkpoint from elsewhere


def distillations(cfg: StudyConfig) -> list[Distillation]:
    """Every run of ``cfg`` with a ``train.distill_teacher``, in matrix order. Its plain counterpart is the run of
    the same {backbone}-{head} without a teacher whose tags are all the student's, the one with most of them
    (``mobilenetv2-ppm`` for ``mobilenetv2-ppm_kd``, ``mobilenetv2-ppm_os16`` for ``mobilenetv2-ppm_kd_os16``)."""
    def tags(name: str) -> set[str]:
        return set(filter(None, catalog.variant_of(name).split("_")))

    specs = expand_runs(cfg)
    taught = [s for s in specs if s.overrides.get("train.distill_teacher", cfg.train.distill_teacher)]
    untaught = [s.name for s in specs if s not in taught]
    out = []
    for spec in taught:
        plain = [n for n in untaught if catalog.pair_of(n) == catalog.pair_of(spec.name) and tags(n) < tags(spec.name)]
        out.append(Distillation(spec.name, max(plain, key=lambda n: len(tags(n)), default=None), spec.teacher))
    return out


def _modules_group(backbone: str) -> str:
    return f"context modules ({catalog.backbone(backbone).label})"


def _stand_ins(cfg: StudyConfig) -> dict[str, str]:
    """{backbone}-{head} → the study's run that stands for it in a comparison of heads: none where the study has
    the run of its reference variant; else its one run of that architecture trained without a teacher (the
    ``resnet50-aspp_deeplabv3`` of a study with no ``resnet50-aspp``), none where it has several."""
    names = [s.name for s in expand_runs(cfg)]
    taught = {d.student for d in distillations(cfg)}
    reference = catalog.reference_variant(names)
    by_pair: dict[str, list[str]] = {}
    for name in names:
        if name not in taught:
            by_pair.setdefault(catalog.pair_of(name), []).append(name)
    return {pair: runs[0] for pair, runs in by_pair.items()
            if catalog.with_variant(pair, reference) not in names and len(runs) == 1}  # fmt: skip


def head_pairs(cfg: StudyConfig | None = None) -> list[tuple[str, str, str]]:
    """Every pair of heads on each backbone, as (group, a, b): the context modules compared on every backbone, not
    only on :data:`CONTEXT_BACKBONE`. With the study's ``cfg``, a head the study runs only as a variant (the
    mmsegmentation studies' ``aspp_deeplabv3``) is compared through that run (:func:`_stand_ins`)."""
    stand_in = _stand_ins(cfg) if cfg is not None else {}
    backbones = [CONTEXT_BACKBONE, *(b for b in catalog.backbones() if b != CONTEXT_BACKBONE)]
    pairs = []
    for b in backbones:
        models = [stand_in.get(f"{b}-{h}", f"{b}-{h}") for h in catalog.heads()]
        pairs += [(_modules_group(b), x, y) for x, y in itertools.combinations(models, 2)]
    return pairs


def fixed_pairs(cfg: StudyConfig | None = None) -> list[tuple[str, str, str]]:
    """The discussed comparisons as (group, a, b) of {backbone}-{head} pairs, the difference being a − b:
    the backbone pairs, every pair of context modules on each backbone (:func:`head_pairs`), the newer mobile
    backbone against the older, and any other backbone of the catalog against the context backbone; with the
    study's ``cfg``, each distilled run against its plain counterpart and its teacher (run names)."""
    backbones = f"backbones ({catalog.head(BACKBONE_HEAD).label})"
    pairs = [(backbones, under_backbone_head(a), under_backbone_head(b)) for a, b in BACKBONE_PAIRS]
    pairs += head_pairs(cfg)
    newer, older = NEWER_MOBILE
    pairs.append((catalog.backbone(newer).label, under_backbone_head(newer), under_backbone_head(older)))
    # A backbone the pairs above do not name (one registered by a user) is compared with the context backbone.
    named = {b for pair in (*BACKBONE_PAIRS, NEWER_MOBILE) for b in pair} | {CONTEXT_BACKBONE}
    pairs += [(backbones, under_backbone_head(b), under_backbone_head(CONTEXT_BACKBONE))
              for b in catalog.backbones() if b not in named]  # fmt: skip
    for d in distillations(cfg) if cfg is not None else []:
        pairs += [(DISTILLATION, d.student, other) for other in (d.plain, d.teacher) if other is not None]
    return pairs
