"""The study file's schema: one typed dataclass per section, and the checks of their values.

``from_dict(StudyConfig, data)`` rejects unknown keys and wrong types with a message that names the file and the
dotted key (``train.lr``); ``validate_config`` checks what joins several values. Sizes are ``[height, width]``
everywhere, as in torch. With :mod:`segmodels.study.typed` (the checks and the JSON schema of typed dataclasses)
this is the bottom layer of the study package: the experiment matrix (:mod:`segmodels.study.matrix`) builds on it,
and :mod:`segmodels.study.config` loads a study file through both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from segmodels.data.layouts import LAYOUTS
from segmodels.data.sources import source_names
from segmodels.study.typed import (
    PATTERN_TEXT,
    ConfigError,
    check_value,
    config_to_dict,
    flatten,
    from_dict,
    json_schema,
    set_dotted,
)
from segmodels.study.typed import limited as _limited

__all__ = [
    "DEPLOY_PATHS",
    "RUN_SECTIONS",
    "BenchmarkConfig",
    "ConfigError",
    "DataConfig",
    "DeployConfig",
    "EvaluateConfig",
    "ModelConfig",
    "RobustnessConfig",
    "StatsConfig",
    "StudyConfig",
    "SynthConfig",
    "TrackingConfig",
    "TrainConfig",
    "config_to_dict",
    "effective_norm",
    "flatten",
    "from_dict",
    "json_schema",
    "set_dotted",
    "validate_config",
]

RUN_SECTIONS = ("model", "train", "evaluate", "benchmark")  # what a model entry or an axis of the matrix may set
DEPLOY_PATHS = ("fp32", "bf16", "onnx", "onnx-int8")  # a run's ways onto a CPU (segmodels.study.deploy)


# A name that becomes a folder, a Snakemake wildcard and an MLflow name: no path separator, no shell syntax,
# not "." or "..", no leading "-" that a command line would take for an option.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]*$"
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
AUTO_PATTERN = r"^auto$"
MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"  # an importable Python module name
REGISTERED_NAME_PATTERN = r"^([A-Za-z0-9._-]|\{experiment\}|\{model\})+$"  # a registered model's name template
PATTERN_TEXT.update({
    MODULE_PATTERN: "be a Python module name (e.g. mylab.models)",
    REGISTERED_NAME_PATTERN: "be letters, digits, '.', '_', '-' and the placeholders {experiment} and {model}",
    NAME_PATTERN: "be a plain name of letters, digits, '.', '_' and '-', not starting with '.' or '-'",
    DEVICE_PATTERN: "be auto, cpu, cuda or cuda:N",
    AUTO_PATTERN: "be auto or a number",
})  # fmt: skip


_SIZE = {"minItems": 2, "maxItems": 2, "items": {"minimum": 1}}  # [height, width]
_AT_LEAST_0 = {"minimum": 0}
_AT_LEAST_1 = {"minimum": 1}
_POSITIVE = {"exclusiveMinimum": 0}


@dataclass
class SynthConfig:
    train: int = _limited(48, **_AT_LEAST_1)  # generated training images
    val: int = _limited(16, **_AT_LEAST_1)  # generated validation images
    # [height, width] as written to disk; the scene generator needs 32 pixels a side
    size: list[int] = _limited(factory=lambda: [256, 512], minItems=2, maxItems=2, items={"minimum": 32})
    seed: int = _limited(0, **_AT_LEAST_0)
    # the file layout written by `segmodels synth` (read back by data.source synthetic, or the layout's own source)
    layout: str = _limited("cityscapes", enum=list(LAYOUTS))


@dataclass
class DataConfig:
    dataset: str = _limited("synthetic", pattern=NAME_PATTERN)  # name of data/raw/{dataset}, data/packed/{dataset}
    # the reader of the raw data (segmodels.data.sources): what `segmodels synth` wrote, Cityscapes, Pascal VOC,
    # ADE20K or a folder with images/, masks/ and classes.yaml
    source: str = _limited("synthetic", enum=source_names())
    # cityscapes: a folder or the folder with the two zips, default $CITYSCAPES_DATASET; others: the dataset's
    # folder, default data/raw/{dataset}
    root: str | None = None
    size: list[int] = _limited(factory=lambda: [512, 1024], **_SIZE)  # packed [height, width]; the study's 1024×512
    synthetic: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class ModelConfig:
    output_stride: int = _limited(8, enum=[8, 16, 32])
    pretrained: str | None = "imagenet"  # imagenet | a path to a state dict | null (random init)
    aux: bool = True  # auxiliary FCN head on the aux stage (training only; OCR needs it: its regions are its logits)
    # Keyword options of the head's class, checked per head at load (e.g. ASPP rates, image_pool; PPM bins);
    # empty: the earlier study's heads. DeepLabV3's ASPP: {rates: [1, 12, 24, 36], image_pool: true}
    head_options: dict[str, Any] = field(default_factory=dict)
    # What the heads' dropout drops (its rate is the head option 'dropout'): element: single activations
    # (nn.Dropout, torchvision's heads); channel: whole feature maps (nn.Dropout2d, mmsegmentation's decode heads)
    head_dropout: str = _limited("element", enum=["element", "channel"])
    # Running-statistics momentum of every BatchNorm while training; null keeps each constructor's own. One
    # value for all backbones: torchvision's MobileNetV3 uses 0.01, whose running statistics trail the weights
    # for the first few hundred steps (a 150-step demo scored 5.4 mIoU with it, 10.3 with 0.1).
    bn_momentum: float | None = _limited(0.1, exclusiveMinimum=0, maximum=1)
    # The normalisation layers (segmodels.models.norms): batch: BatchNorm over each GPU's micro-batch; sync:
    # SyncBatchNorm under DDP, pooling all GPUs' micro-batches (mmsegmentation's SyncBN; one GPU trains as batch);
    # group: GroupNorm (32 groups) in place of every BatchNorm, its affine weights kept: independent of the batch
    # and of train.accumulate, but not folded for deployment and the pretrained statistics are dropped
    norm: str = _limited("batch", enum=["batch", "sync", "group"])
    # null: the number of classes the packed data's manifest lists; a number is checked against it. At most 255:
    # labels are bytes and 255 is the ignore index
    num_classes: int | None = _limited(None, minimum=1, maximum=255)


@dataclass
class TrainConfig:
    iterations: int = _limited(40000, **_AT_LEAST_1)  # optimizer steps; the schedule is iteration-based
    batch_size: int = _limited(8, **_AT_LEAST_1)  # the effective batch of one optimizer step, over all GPUs
    # gradient accumulation: each step's batch in this many micro-batches, one backward each, one optimizer step
    # (the field's batch on one card). BatchNorm then normalises over the micro-batch, not the batch
    accumulate: int = _limited(1, **_AT_LEAST_1)
    # images per forward pass (per GPU): a divisor of the batch, the accumulation then batch / micro_batch; auto:
    # the largest that fits the card with 10% headroom, found before the first step; null: from accumulate
    micro_batch: int | str | None = _limited(None, minimum=1, pattern=AUTO_PATTERN)
    crop_size: list[int] = _limited(factory=lambda: [512, 1024], **_SIZE)  # [height, width]
    # random rescale before the crop, [low, high]
    scale_range: list[float] = _limited(factory=lambda: [0.5, 2.0], minItems=2, maxItems=2, items=_POSITIVE)
    lr: float = _limited(0.01, **_POSITIVE)  # base learning rate; heads may use a multiple
    # sgd: SGD with momentum (the CNN recipe); adamw: AdamW, betas (0.9, 0.999), the transformer recipe (SegFormer:
    # lr 6e-5, weight_decay 0.01, head_lr_mult 10, warmup_iters 1500, warmup_ratio 1e-6)
    optimizer: str = _limited("sgd", enum=["sgd", "adamw"])
    momentum: float = _limited(0.9, minimum=0, exclusiveMaximum=1)  # SGD's
    weight_decay: float = _limited(1e-4, **_AT_LEAST_0)
    # the parameters weight decay skips: 1d: every 1-d tensor (norm weights, biases) and position parameters
    # (pos_block, pos_embed, cls_token); none: decay on every parameter (mmsegmentation's CNN configs, no
    # paramwise_cfg); segformer: parameters whose name holds 'norm' or 'pos_block' (SegFormer's paramwise_cfg)
    no_decay: str = _limited("1d", enum=["1d", "none", "segformer"])
    poly_power: float = _limited(0.9, **_AT_LEAST_0)
    # where the poly schedule ends: base lr (lr - min_lr)·(1 - step/total)^power + min_lr (mmsegmentation's
    # eta_min / min_lr: 1e-4 in its CNN schedules, 0 in SegFormer's); a group at head_lr_mult ends at that multiple
    min_lr: float = _limited(0.0, **_AT_LEAST_0)
    warmup_iters: int = _limited(0, **_AT_LEAST_0)  # linear warm-up from lr * warmup_ratio
    warmup_ratio: float = _limited(0.1, minimum=0, maximum=1)
    aux_weight: float = _limited(0.4, **_AT_LEAST_0)  # also OCR's soft-object-region loss: its regions are aux
    # the divisor of each cross-entropy term: labelled: the labelled pixels (PyTorch's mean with ignore_index);
    # all: every pixel of the batch's crops, ignored ones included (mmsegmentation's avg_non_ignore=False)
    loss_average: str = _limited("labelled", enum=["labelled", "all"])
    # a crop in which one class covers this fraction or more of the labelled pixels (or that has one class or
    # none) is redrawn, up to 10 times (mmsegmentation's RandomCrop cat_max_ratio, 0.75 in its configs); 1: off
    cat_max_ratio: float = _limited(1.0, exclusiveMinimum=0, maximum=1)
    # the contrast factor c scales around the crop's mean grey (mean) or around black, x·c (zero: mmsegmentation's
    # PhotoMetricDistortion, which also darkens or brightens the image)
    contrast_center: str = _limited("mean", enum=["mean", "zero"])
    # The teacher: a run of the same study (its name, e.g. resnet101-ppm: that run's checkpoint of the same seed,
    # trained first), or the path of a trained teacher's run folder or checkpoint
    distill_teacher: str | None = None
    distill_weight: float = _limited(1.0, **_AT_LEAST_0)
    distill_temperature: float = _limited(1.0, **_POSITIVE)
    # lr multiple for everything outside the backbone (PSPNet used 10 with ImageNet init)
    head_lr_mult: float = _limited(1.0, **_POSITIVE)
    # mixed precision: on a GPU bf16 where supported, else fp16; on a CPU bf16 autocast where bf16 is native
    # (AVX512-BF16, AMX; on the demo 1.2x faster with the same loss curves), fp32 elsewhere
    amp: bool = True
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # the earlier spelling of model.norm: sync (study files and checkpoints that set it load)
    deterministic: bool = False
    log_every: int = _limited(20, **_AT_LEAST_1)  # iterations between logged metrics
    val_every: int = _limited(0, **_AT_LEAST_0)  # iterations between validation passes (0: only at the end)
    ckpt_every: int = _limited(200, **_AT_LEAST_1)  # iterations between last.pt writes
    device: str = _limited("auto", pattern=DEVICE_PATTERN)  # auto | cpu | cuda | cuda:N


@dataclass
class EvaluateConfig:
    batch_size: int = _limited(4, **_AT_LEAST_1)
    flip: bool = False  # test-time horizontal flip
    scales: list[float] = _limited(factory=lambda: [1.0], minItems=1, items=_POSITIVE)  # test-time scales
    sliding: bool = False  # sliding-window inference instead of whole-image
    window: list[int] = _limited(factory=lambda: [512, 1024], **_SIZE)  # [height, width] of a window
    stride: list[int] = _limited(factory=lambda: [341, 682], **_SIZE)
    full_resolution: bool = False  # upsample scores to the raw labels' size (1024×2048) and score against those
    # validation images drawn for figures
    samples: list[int] = _limited(factory=lambda: [0, 1, 2, 3], items=_AT_LEAST_0)
    amp: bool = True
    device: str = _limited("auto", pattern=DEVICE_PATTERN)


@dataclass
class BenchmarkConfig:
    size: list[int] = _limited(factory=lambda: [512, 1024], **_SIZE)  # [height, width] of the timed input
    batch_size: int = _limited(1, **_AT_LEAST_1)
    warmup: int = _limited(20, **_AT_LEAST_0)
    repeats: int = _limited(100, **_AT_LEAST_1)
    # on the CPU, warmup and repeats are capped at these (a CPU forward takes seconds)
    cpu_warmup: int = _limited(3, **_AT_LEAST_0)
    cpu_repeats: int = _limited(10, **_AT_LEAST_1)
    # Each mode is timed alone: fp32 | amp, optionally +channels_last +compile +cudagraphs (e.g.
    # "amp+channels_last"); "channels_last" alone is fp32 in that layout; "onnx" runs the exported model in
    # onnxruntime. Modes that make no sense on the device are reported as skipped with the reason.
    modes: list[str] = field(default_factory=lambda: ["fp32", "amp"])
    amp_dtype: str = _limited("float16", enum=["float16", "bfloat16"])  # for the amp modes
    # ONNX opset of the "onnx" mode and of `segmodels export` (18: the exporter's lowest)
    onnx_opset: int = _limited(18, minimum=18)
    device: str = _limited("auto", pattern=DEVICE_PATTERN)


@dataclass
class TrackingConfig:
    experiment: str = "segbench"  # MLflow experiment name
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db
    # longest wait before buffered metrics are sent (one log_batch call)
    flush_seconds: float = _limited(30.0, **_AT_LEAST_0)
    log_weights: bool = False  # also upload checkpoint.pt as a run artifact
    # the trained model as the run's MLflow model (runs:/<run id>/model), a pickle: load only from a trusted store
    log_model: bool = True
    register: bool = False  # also a version of it in the model registry; the summary aliases the best "champion"
    # {experiment}: the study's name, {model}: the run's ({model} gives each model a registered model of its own)
    registered_name: str = _limited("segbench-{experiment}", pattern=REGISTERED_NAME_PATTERN)


@dataclass
class StatsConfig:
    # Bootstrap resamples (segmodels.study.stats). auto (or null): from the size of the family of comparisons, so
    # that the smallest Holm-adjusted p-value the resamples can give, 2·family / (resamples + 1), is at most a tenth
    # of 1 − confidence (at least 1000); a number: that many, whatever the family
    resamples: int | str | None = _limited("auto", minimum=1, pattern=AUTO_PATTERN)
    seed: int = 0  # one seed for every model, so all models see the same resampled image sets (paired)
    confidence: float = _limited(0.95, exclusiveMinimum=0, exclusiveMaximum=1)  # level of the two-sided percentile intervals


@dataclass
class DeployConfig:
    # Each deployed run on the CPU (`segmodels deploy`, segmodels.study.deploy): the mIoU of fp32 PyTorch and of
    # each path below on the validation split, with paired intervals of the differences, and the latency of each
    enabled: bool = False
    paths: list[str] = _limited(factory=lambda: ["bf16", "onnx", "onnx-int8"], items={"enum": list(DEPLOY_PATHS)})
    calibration: int = _limited(100, **_AT_LEAST_1)  # packed training images INT8 is calibrated on (at most the split)
    size: list[int] | None = _limited(None, **_SIZE)  # timed [height, width]; null: benchmark.size
    models: list[str] = field(default_factory=list)  # the runs deployed, by run name; empty: every run


@dataclass
class RobustnessConfig:
    # Each run scored on corrupted validation images (`segmodels robustness`, segmodels.study.robustness): the
    # ImageNet-C corruptions and their 4 extra, as the imagecorruptions package defines them, at severities 1-5
    enabled: bool = False
    # corruption names or groups (noise, blur, weather, digital) or all; segmodels.data.corruptions lists them
    corruptions: list[str] = _limited(factory=lambda: ["all"], minItems=1, items={"pattern": NAME_PATTERN})
    severities: list[int] = _limited(factory=lambda: [1, 2, 3, 4, 5], minItems=1, items={"minimum": 1, "maximum": 5})
    models: list[str] = field(default_factory=list)  # the runs scored, by run name; empty: every run
    images: int | None = _limited(None, **_AT_LEAST_1)  # the first N validation images; null: all of them
    # true: each corruption's images made once (`segmodels corrupt`, data/corrupted/), read by every model; false:
    # made inside each robustness job instead (no disk; the CPU work repeated per model)
    cache: bool = True


@dataclass
class StudyConfig:
    experiment: str = _limited("study", pattern=NAME_PATTERN)  # results/{experiment}/
    # Python modules imported before the rest is read, to register backbones, heads or metrics of your own
    # (segmodels.models.register_backbone/register_head, segmodels.metrics.register_metric); on PYTHONPATH
    plugins: list[str] = _limited(factory=list, items={"pattern": MODULE_PATTERN})
    # Backbones that are timm models, by a name of lowercase letters and digits: {convnextt: {timm: convnext_tiny}}
    # (optional label and short: what the report prints); registered before the models are read
    backbones: dict[str, dict[str, str]] = field(default_factory=dict)
    # {backbone}-{head}[_tag...], or {name: {dotted.key: value}} with overrides of the run-level sections
    models: list[str | dict[str, dict[str, Any]]] = field(default_factory=lambda: ["resnet18-ppm"])
    axes: dict[str, list[Any]] = field(default_factory=dict)  # dotted key → values, crossed with every model entry
    seeds: list[int] = _limited(factory=lambda: [0], minItems=1, items=_AT_LEAST_0)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)


def _check_head_options(cfg: StudyConfig, where: str) -> None:
    """``model.head_options`` against the options of every head among ``cfg.models`` (a run's effective config
    has its own model alone); names that are not {backbone}-{head}[_tag...] are left to the matrix."""
    from segmodels.models import catalog  # light: no torch

    heads = []
    for entry in cfg.models:
        name = next(iter(entry), "") if isinstance(entry, dict) else entry
        try:
            heads.append(catalog.arch_of(catalog.pair_of(name))[1])
        except ValueError:
            continue
    for head in dict.fromkeys(heads):
        allowed = catalog.head(head).options
        for option, value in cfg.model.head_options.items():
            key = f"model.head_options.{option}"
            if option not in allowed:
                raise ConfigError(f"{where}: unknown key '{key}' for head '{head}'; its options: {', '.join(allowed)}")
            check_value(value, allowed[option][0], key, where)


def _check_accumulation(t: TrainConfig, where: str) -> None:
    """``train.accumulate`` and ``train.micro_batch`` against ``train.batch_size`` (and each other)."""
    if t.batch_size % t.accumulate:
        raise ConfigError(f"{where}: 'train.accumulate' {t.accumulate} does not divide 'train.batch_size' "
                          f"{t.batch_size}: each micro-batch must hold the same number of images")  # fmt: skip
    if t.micro_batch == "auto" and t.accumulate != 1:
        raise ConfigError(f"{where}: 'train.micro_batch' auto chooses the accumulation itself; drop 'train.accumulate' "
                          f"{t.accumulate} or give 'train.micro_batch' a number")  # fmt: skip
    if isinstance(t.micro_batch, int):
        if t.micro_batch > t.batch_size or t.batch_size % t.micro_batch:
            raise ConfigError(f"{where}: 'train.micro_batch' {t.micro_batch} must divide 'train.batch_size' "
                              f"{t.batch_size} (at most the batch)")  # fmt: skip
        if t.accumulate not in (1, t.batch_size // t.micro_batch):
            raise ConfigError(f"{where}: 'train.micro_batch' {t.micro_batch} and 'train.accumulate' {t.accumulate} "
                              f"disagree: batch {t.batch_size} / micro-batch {t.micro_batch} is "
                              f"{t.batch_size // t.micro_batch}; set one of them")  # fmt: skip


def effective_norm(cfg: StudyConfig) -> str:
    """The run's ``model.norm``, with ``train.sync_bn: true`` (its earlier spelling) read as ``sync``."""
    return "sync" if cfg.train.sync_bn and cfg.model.norm == "batch" else cfg.model.norm


def validate_config(cfg: StudyConfig, where: str) -> None:
    """Checks that join several values (one value's limits are checked by :func:`from_dict`; the model entries
    by :func:`segmodels.study.matrix.expand_runs`)."""
    _check_head_options(cfg, where)
    if cfg.train.min_lr > cfg.train.lr:
        raise ConfigError(f"{where}: 'train.min_lr' {cfg.train.min_lr} is above 'train.lr' {cfg.train.lr}; the poly "
                          "schedule would raise the learning rate")  # fmt: skip
    _check_accumulation(cfg.train, where)
    if cfg.train.sync_bn and cfg.model.norm == "group":
        raise ConfigError(f"{where}: 'train.sync_bn' is true but 'model.norm' is group; train.sync_bn is the earlier "
                          "spelling of model.norm: sync: set model.norm alone")  # fmt: skip
    low, high = cfg.train.scale_range
    if low > high:
        raise ConfigError(f"{where}: 'train.scale_range' must be [low, high] with low <= high, got {[low, high]}")
    # A crop larger than the largest rescaled image is mostly padding: every step would learn from the ignore label.
    largest = [round(side * high) for side in cfg.data.size]
    if any(crop > side for crop, side in zip(cfg.train.crop_size, largest, strict=True)):
        raise ConfigError(
            f"{where}: 'train.crop_size' {cfg.train.crop_size} is larger than the packed images ('data.size' "
            f"{cfg.data.size}) at the largest scale ('train.scale_range' high {high}: {largest}); most of each crop "
            "would be padding. Use a smaller crop, a larger data.size or a larger scale."
        )
