"""Training of one model and seed into one run folder, resumable after a kill at any point.

The recipe (defaults in :class:`segmodels.study.config.TrainConfig`): SGD with momentum 0.9, weight
decay 1e-4 on conv and linear weights only, poly decay (power 0.9) of the learning rate over an
iteration-based schedule with optional linear warm-up, cross-entropy ignoring label 255, the
auxiliary loss at 0.4 (PSPNet, Zhao et al. 2017), which for OCR is also the soft-object-region loss (its
regions are the aux logits),
and optional pixel-wise distillation from a trained teacher (a run of the study, or a checkpoint).
``train.batch_size`` is the global batch: under ``torchrun`` each of N processes takes batch_size / N
images, so the recipe does not change with the number of GPUs. ``train.head_lr_mult`` (default 1, as
mmsegmentation's Cityscapes recipes) scales the learning rate of everything outside the backbone; PSPNet used 10.

The run folder (``--out``, :mod:`segmodels.study.runs`) gets the final weights and the training log (the job's
declared outputs), the resume state (``last.pt``, the growing log, the MLflow run id and, while the tracking server
is unreachable, its records), the resolved config (also an MLflow artifact) and ``cost.json``: wall, CPU and GPU
hours, images and GPU energy where NVML reads it, summed over resumed segments (:mod:`segmodels.engine.cost`); also
``cost/train_*`` metrics and a ``cost.train_device`` tag of the MLflow run, which also gets ``train/...`` curves,
the packed splits as dataset inputs and, while training, MLflow's ``system/...`` metrics.

The optimisation step and the GPU speed features are in :mod:`segmodels.engine.step`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segmodels.engine import checkpoint as ckpt
from segmodels.engine import distributed
from segmodels.engine.micro_batch import OutOfMemory, is_out_of_memory, oom_message, run_accumulation
from segmodels.engine.progress import Progress
from segmodels.engine.run import OpenRun, open_run, with_data_classes
from segmodels.engine.step import (
    SpeedSettings,
    Stepper,
    build_optimizer,
    first_nonfinite_step,
    poly_lr,
    speed_settings,
    state_is_finite,
)
from segmodels.models.norms import training_norms
from segmodels.study import runs
from segmodels.study.config import StudyConfig, config_to_dict, flatten
from segmodels.study.matrix import teacher_name
from segmodels.study.schema import effective_norm
from segmodels.tracking import log_trained_model

__all__ = ["NonFiniteLossError", "OutOfMemory", "TrainResult", "log_columns", "run_params", "train"]


def log_columns() -> tuple[str, ...]:
    """train_log.csv's columns: losses, learning rate, speed, and ``val_{key}`` of each metric scored while
    training (:func:`segmodels.metrics.metric_keys`)."""
    from segmodels.metrics import metric_keys

    return ("iteration", "loss", "loss_main", "loss_aux", "loss_distill", "lr", "images_per_s", "data_wait_ms",
            *(f"val_{key}" for key in metric_keys(training=True)), "micro_batch", "accumulate",
            "elapsed_s")  # fmt: skip


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the last good state."""


# --- the run -----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    run_id: str | None
    val: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = None  # the trained module (unwrapped), on its device


def run_params(cfg: StudyConfig, model_name: str, seed: int) -> dict[str, Any]:
    """The flat params of a run: its whole config plus ``run.model`` (the run name) and ``run.seed``."""
    return {**flatten(config_to_dict(cfg)), "run.model": model_name, "run.seed": seed}


def _check_inputs(cfg: StudyConfig, data_dir: Path, seed: int, results: Path) -> Path | None:
    """Check the packed data and the schedule; return the distillation teacher's checkpoint, if any: a teacher
    named by run is that run's of the same seed under ``results`` (:func:`segmodels.study.matrix.teacher_name`)."""
    from segmodels.data.pack import check_num_classes

    check_num_classes(data_dir, cfg.model.num_classes)
    _check_samples(cfg.evaluate.samples, data_dir / "val")
    t = cfg.train
    for key in ("iterations", "batch_size", "log_every", "ckpt_every"):
        if getattr(t, key) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {getattr(t, key)}")
    if not t.distill_teacher:
        return None
    name = teacher_name(t.distill_teacher)
    path = runs.run_dir(results, cfg.experiment, name, seed) if name else Path(t.distill_teacher)
    teacher = runs.RunFolder(path).checkpoint if name or path.is_dir() else path
    if not teacher.is_file():
        run = f"teacher run {name}, seed {seed}, is not trained (train it first; Snakemake does), " if name else ""
        raise FileNotFoundError(f"train.distill_teacher: {run}no checkpoint at {teacher}")
    return teacher


def _check_samples(samples: list[int], val_dir: Path) -> None:
    """Refuse ``evaluate.samples`` (the validation images drawn in the figures) past the end of the validation
    split now, not in the evaluate job after training."""
    images = val_dir / "images.npy"
    if not samples or not images.is_file():
        return
    import numpy as np

    n = np.load(images, mmap_mode="r").shape[0]
    if bad := [i for i in samples if not 0 <= i < n]:
        raise ValueError(f"evaluate.samples: index {bad[0]} is out of range for the {n} validation images of "
                         f"{val_dir}")


def _seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True


def _new_state(run: OpenRun, params: dict[str, Any], info: distributed.DistInfo, device: torch.device,
               speed: SpeedSettings) -> ckpt.TrainState:  # fmt: skip
    """The model (ImageNet weights where configured), its optimizer and gradient scaler, on ``device``."""
    t = run.cfg.train
    model = run.build_model()
    model = training_norms(model, effective_norm(run.cfg), distributed=info.enabled, device_type=device.type)
    model.to(device).train()
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, t, fused=speed.fused_optimizer, foreach=speed.foreach)
    scaler = torch.amp.GradScaler(device.type, enabled=speed.amp_dtype == torch.float16)
    return ckpt.TrainState(run.cfg, model, optimizer, scaler, params, info, device, run.folder)


def _stepper(state: ckpt.TrainState, speed: SpeedSettings, teacher_path: Path | None) -> Stepper:
    """The optimisation step of the (DDP-wrapped, compiled where configured) model, with the teacher if any."""
    teacher, device = None, state.device
    if teacher_path is not None:
        teacher = ckpt.load_model_from_checkpoint(teacher_path, device=device,
                                                  expect_num_classes=state.cfg.model.num_classes)  # fmt: skip
        teacher.requires_grad_(False)
        if speed.channels_last:
            teacher.to(memory_format=torch.channels_last)
    model = state.model
    if state.info.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if speed.compile:
        model = torch.compile(model)
    acc = state.accumulation
    return Stepper(model, state.optimizer, state.scaler, state.cfg.train, amp_dtype=speed.amp_dtype,
                   device_type=device.type, teacher=teacher, accumulate=acc.accumulate if acc else 1)  # fmt: skip


def _start_logging(run: OpenRun, state: ckpt.TrainState, data_dir: Path) -> None:
    """config.yaml, and the run's MLflow run with its params, tags and data, its system metrics started (the main
    process only)."""
    from segmodels.atomic import write_text_atomic
    from segmodels.models import count_parameters
    from segmodels.models.catalog import arch_of, head_label, variant_of
    from segmodels.tracking import git_commit, packed_inputs

    cfg, device = run.cfg, state.device
    write_text_atomic(run.folder.config, _yaml(cfg, run.name, run.seed))
    backbone, head = arch_of(run.name)
    run.start_logger(
        {**state.params, "model.backbone": backbone, "model.head": head, "model.params": count_parameters(state.model),
         "model.head_label": head_label(head, cfg.model.head_options), "run.variant": variant_of(run.name)},
        {"git_commit": git_commit(), "torch_version": torch.__version__, "world_size": state.info.world_size,
         "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        packed_inputs(data_dir),
    )  # fmt: skip


def _data(state: ckpt.TrainState, data_dir: Path, seed: int, speed: SpeedSettings) -> tuple[Any, Any]:
    """This process's training batches, and the validation split when the packed data has one."""
    from segmodels.data.loader import PackedSplit, TrainLoader

    t, info = state.cfg.train, state.info
    loader = TrainLoader(PackedSplit(data_dir / "train"), batch_size=t.batch_size // info.world_size,
                         crop_size=tuple(t.crop_size), scale_range=tuple(t.scale_range), device=state.device,
                         seed=seed, rank=info.rank, world_size=info.world_size, channels_last=speed.channels_last,
                         cat_max_ratio=t.cat_max_ratio, contrast_center=t.contrast_center)  # fmt: skip
    val_split = PackedSplit(data_dir / "val") if (data_dir / "val" / "images.npy").is_file() else None
    return loader, val_split


def _log_finish(run: OpenRun, cost: dict[str, Any]) -> None:
    """The training's cost, config, log and (with ``tracking.log_weights``) weights, to its MLflow run."""
    from segmodels.engine.cost import cost_metrics

    folder = run.folder
    weights = (folder.checkpoint,) if run.cfg.tracking.log_weights else ()
    run.log(metrics=cost_metrics(cost, "cost/train_"), tags={"cost.train_device": cost["device"]},
            artifacts=(folder.config, folder.train_log, *weights), step=run.cfg.train.iterations)  # fmt: skip


def train(cfg: StudyConfig, model_name: str, *, seed: int = 0, out: str | Path, data_dir: str | Path | None = None,
          restart: bool = False, results: str | Path = "results") -> TrainResult:
    """Train run ``model_name`` with ``cfg`` into ``out``, continuing from ``out/last.pt`` when it is there.

    ``model_name`` is a run of the study's matrix (or any plain {backbone}-{head}); training uses the run's
    effective config (:func:`segmodels.engine.run.open_run`; a run's own effective config passes unchanged).
    ``data_dir`` defaults to ``data/packed/{data.dataset}``; a teacher named by run (``train.distill_teacher``) is
    the checkpoint of the same seed in ``{results}/{experiment}/{teacher}/seed{seed}/``. Bad input raises
    ValueError or FileNotFoundError before any work; so does a ``last.pt`` written with other training-relevant
    settings (unless ``restart``, which discards the folder's previous state). A diverging loss
    raises :class:`NonFiniteLossError`; ``last.pt`` then keeps the last good state.
    """
    from segmodels.data.labelset import recorded_label_set
    from segmodels.data.pack import data_identity

    data_dir = Path(data_dir) if data_dir is not None else Path("data/packed") / cfg.data.dataset
    if not (data_dir / "train" / "images.npy").is_file():
        raise FileNotFoundError(
            f"packed train split not found: {data_dir / 'train' / 'images.npy'} (run `segmodels prepare`, or pass --data)"
        )
    cfg = with_data_classes(cfg, data_dir)  # the number of classes of the model: the data's, unless set
    with open_run(cfg, out, job="train", model_name=model_name, seed=seed) as run:
        cfg, t = run.cfg, run.cfg.train
        teacher_path = _check_inputs(cfg, data_dir, seed, Path(results))
        info, device = distributed.init_distributed(t.device)
        flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                 torch.backends.cudnn.benchmark)  # fmt: skip
        try:
            if t.batch_size % info.world_size:
                raise ValueError(f"train.batch_size {t.batch_size} is not divisible by {info.world_size} processes")
            # The packed data's identity joins the run's params: resuming on other data of the same name is refused.
            params = run_params(cfg, model_name, seed) | {"run.data_identity": data_identity(data_dir)}
            saved = ckpt.resume_state(run.folder, params, data_dir=data_dir, is_main=info.is_main, restart=restart)
            speed = speed_settings(t, device)
            _seed_everything(seed, t.deterministic)
            speed.apply_backend_flags(deterministic=t.deterministic)
            state = _new_state(run, params, info, device, speed)
            if saved is not None:
                state.restore(saved)
            state.accumulation = run_accumulation(state, speed, saved)
            stepper = _stepper(state, speed, teacher_path)
            loader, val_split = _data(state, data_dir, seed, speed)
            precision = "fp32" if speed.amp_dtype is None else str(speed.amp_dtype).removeprefix("torch.")
            if info.is_main:
                _start_logging(run, state, data_dir)
                acc = state.accumulation
                run.log(tags={"train_precision": precision,  # amp on a CPU: bf16 only where it is native
                              "train.micro_batch": str(acc.micro_batch), "train.accumulate": str(acc.accumulate),
                              "train.micro_batch_searched": str(acc.searched).lower()})  # fmt: skip
            meter = run.meter(device, gpus=info.world_size if device.type == "cuda" else 0, save=info.is_main,
                              resume=state.start > 0)  # fmt: skip
            loop = _Loop(state, stepper, run.logger, meter)
            with meter:  # a killed run leaves its cost.json; the resumed run adds its own segment
                try:
                    val = loop.run(loader, val_split)
                except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                    if not is_out_of_memory(exc):
                        raise
                    raise OutOfMemory(oom_message(model_name, state.accumulation, tuple(t.crop_size), precision,
                                                  device)) from exc  # fmt: skip
                meter.images = t.iterations * t.batch_size  # what the final weights were trained on
            if info.is_main:
                labels = recorded_label_set(data_dir)
                state.save_final(model_name, labels.to_manifest() if labels is not None else None)
                loop.log.finish()
                _log_finish(run, meter.result())
            run_id = run.logger.run_id if run.logger is not None else None
            run.end()
            if info.is_main:  # the checkpoint just written, as the run's MLflow model (tracking.log_model)
                log_trained_model(run.folder.path, None, cfg, labels.classes if labels is not None else None)
            distributed.barrier()
            return TrainResult(run.folder.path, t.iterations, run_id, val, state.model)
        finally:
            distributed.cleanup()
            torch.use_deterministic_algorithms(flags[0])  # a library call leaves the process as it found it
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[1:]


class _Loop:
    """The iterations; host–device syncs only at logging, validation and checkpoint iterations."""

    def __init__(self, state: ckpt.TrainState, stepper: Stepper, logger: Any, meter: Any) -> None:
        self.state, self.t, self.stepper = state, state.cfg.train, stepper
        self.logger = logger  # the run's RunLogger on the main process, else None
        self.meter = meter  # the job's CostMeter: its record is saved with each last.pt
        self.log: ckpt.TrainLog | None = None

    def save_last(self, iteration: int) -> None:
        self.meter.checkpoint()  # first: wherever last.pt holds this state, cost.json holds its cost
        self.state.save_last(iteration)

    def validate(self, split: Any) -> dict[str, float]:
        """``val_{key}`` of each metric scored while training, on the validation split (all ranks take part)."""
        from segmodels.data.loader import val_batches
        from segmodels.metrics import ConfusionMatrix, compute_metrics, metric_scores

        s = self.state
        distributed.broadcast_buffers(s.model)
        matrix = ConfusionMatrix(s.cfg.model.num_classes, 255, device=s.device)
        s.model.eval()
        with torch.inference_mode(), self.stepper.autocast():
            for images, labels, _ in val_batches(split, batch_size=s.cfg.evaluate.batch_size, device=s.device,
                                                 rank=s.info.rank, world_size=s.info.world_size):  # fmt: skip
                matrix.update(s.model(images)["out"].argmax(1), labels)
        s.model.train()
        return metric_scores(compute_metrics(matrix.reduce_().matrix), "val_", training=True)

    def run(self, loader: Any, val_split: Any) -> dict[str, float]:
        t, info, total, start = self.t, self.state.info, self.t.iterations, self.state.start
        self.log = ckpt.TrainLog(self.state.folder, log_columns(), resume_iteration=start) if info.is_main else None
        progress = Progress(total, start, batch=t.batch_size, enabled=info.is_main)
        sums: dict[str, torch.Tensor] = {}
        count, last_good, val = 0, start, {}
        bad_step = torch.full((), -1, dtype=torch.int64, device=self.state.device)
        from segmodels.data.loader import WaitClock

        batches = loader.iterate(start)
        waited = WaitClock(batches)
        try:
            for step, (images, labels) in zip(range(start, total), waited, strict=False):
                lr = poly_lr(step, base_lr=t.lr, total=total, power=t.poly_power, warmup_iters=t.warmup_iters,
                             warmup_ratio=t.warmup_ratio, min_lr=t.min_lr)
                loss, parts = self.stepper(images, labels, lr)
                bad_step = torch.where(~torch.isfinite(loss) & (bad_step < 0), torch.full_like(bad_step, step),
                                       bad_step)
                for key, value in (("loss", loss), *((f"loss_{k}", v) for k, v in parts.items())):
                    sums[key] = sums[key] + value if key in sums else value.clone()
                count += 1
                iteration = step + 1
                progress.update()
                is_val = val_split is not None and (
                    iteration == total or (t.val_every > 0 and iteration % t.val_every == 0))
                is_log = iteration % t.log_every == 0 or iteration == total or is_val
                is_ckpt = iteration % t.ckpt_every == 0 or iteration == total
                if not (is_log or is_ckpt):
                    continue
                first = first_nonfinite_step(bad_step, info)
                if first < 0 and is_ckpt and not state_is_finite(self.state.model, info):
                    first = step  # finite loss, but the update overflowed: this state is not kept
                if first >= 0:
                    raise NonFiniteLossError(
                        f"loss is not finite at iteration {first + 1} of {total}; training stopped. "
                        f"The last good state (iteration {last_good}) is kept in {self.state.folder.last}")
                if is_log:
                    names = sorted(sums)
                    means = distributed.all_reduce_mean(torch.stack([sums[k] for k in names]).float() / count).tolist()
                    row = {**dict(zip(names, means, strict=True)), "lr": lr, "images_per_s": progress.rate(iteration),
                           "data_wait_ms": waited.take() * 1000.0 / count}  # fmt: skip
                    sums, count = {}, 0
                    if is_val:
                        val = self.validate(val_split)
                        row.update(val)
                        progress.rate(iteration)  # validation time is not training throughput
                    if (acc := self.state.accumulation) is not None:
                        row.update(micro_batch=acc.micro_batch, accumulate=acc.accumulate)
                    row["elapsed_s"] = time.perf_counter() - progress.t0
                    progress.report(iteration, row)
                    if self.log is not None:
                        self.log.write(iteration, row)
                    if self.logger is not None:
                        self.logger.log_metrics({f"train/{k}": v for k, v in row.items()}, step=iteration)
                if is_ckpt:
                    if info.is_main:
                        self.save_last(iteration)
                    last_good = iteration
                    if self.logger is not None:
                        self.logger.flush()
            if start >= total and val_split is not None:  # a finished run started again: final scores only
                val = self.validate(val_split)
            distributed.broadcast_buffers(self.state.model)  # every rank ends with the state rank 0 saves
        finally:
            progress.close()
            if hasattr(batches, "close"):
                batches.close()
        return val


def _yaml(cfg: StudyConfig, model_name: str, seed: int) -> str:
    import yaml

    return f"# Resolved config of {model_name} seed {seed}.\n" + yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
