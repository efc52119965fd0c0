"""Training of one model and seed into one run folder, resumable after a kill at any point.

The recipe (defaults in :class:`segmodels.study.config.TrainConfig`): SGD with momentum 0.9, weight
decay 1e-4 on conv and linear weights only, poly decay (power 0.9) of the learning rate over an
iteration-based schedule with optional linear warm-up, cross-entropy ignoring label 255, the
auxiliary loss at 0.4 (PSPNet, Zhao et al. 2017), which for OCR is also the soft-object-region loss (its
regions are the aux logits),
and optional pixel-wise distillation from a trained teacher. ``train.batch_size`` is the global
batch: under ``torchrun`` each of N processes takes batch_size / N images, so the recipe does not
change with the number of GPUs. ``train.head_lr_mult`` (default 1, as mmsegmentation's Cityscapes
recipes) scales the learning rate of everything outside the backbone; PSPNet used 10.

Files in the run folder (``--out``):

- final, the job's declared outputs: ``checkpoint.pt`` (weights and model description, see
  :mod:`segmodels.engine.checkpoint`) and ``train_log.csv`` (``train_log.partial.csv`` renamed at
  the end);
- resume state, never declared (Snakemake deletes declared outputs before a job and after a
  failure): ``last.pt``, ``train_log.partial.csv``, ``mlflow_run_id``, and ``mlflow_offline.jsonl``
  while the tracking server is unreachable;
- ``config.yaml``: the resolved config of the run (also an MLflow artifact);
- ``cost.json``: wall, CPU and GPU hours, images and GPU energy where NVML reads it, summed over resumed
  segments (:mod:`segmodels.engine.cost`); also ``cost/train_*`` metrics and a ``cost.train_device`` tag of the
  MLflow run.

The optimisation step and the GPU speed features are in :mod:`segmodels.engine.step`.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segmodels.study.config import StudyConfig, config_to_dict, flatten
from segmodels.engine import checkpoint as ckpt
from segmodels.engine.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    cleanup,
    init_distributed,
)
from segmodels.engine.step import (
    Stepper,
    build_optimizer,
    first_nonfinite_step,
    poly_lr,
    speed_settings,
    state_is_finite,
)

__all__ = [
    "LOG_COLUMNS",
    "NonFiniteLossError",
    "TrainResult",
    "run_params",
    "train",
]

LOG_COLUMNS = ("iteration", "loss", "loss_main", "loss_aux", "loss_distill", "lr",
               "images_per_s", "data_wait_ms", "val_miou", "val_allacc", "elapsed_s")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and the last good state."""


# --- progress ----------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar on a terminal; plain lines at logging iterations otherwise (Snakemake logs)."""

    def __init__(self, total: int, start: int, *, batch: int, enabled: bool) -> None:
        self.total, self.start, self.batch, self.enabled = total, start, batch, enabled
        self.t0 = self._t = time.perf_counter()
        self._it = start
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def rate(self, iteration: int) -> float:
        """Images per second since the previous call (call it after a device sync)."""
        now = time.perf_counter()
        rate = (iteration - self._it) * self.batch / max(now - self._t, 1e-9)
        self._t, self._it = now, iteration
        return rate

    def report(self, iteration: int, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        eta = (self.total - iteration) * elapsed / max(iteration - self.start, 1)
        text = {"loss": f"{row['loss']:.4f}", "lr": f"{row['lr']:.2e}", "img/s": f"{row['images_per_s']:.1f}"}
        if "val_miou" in row:
            text["val_mIoU"] = f"{row['val_miou']:.4f}"
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
        else:
            fields = " ".join(f"{k} {v}" for k, v in text.items())
            print(f"iter {iteration}/{self.total} {fields} eta {time.strftime('%H:%M:%S', time.gmtime(eta))}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


def _check_inputs(cfg: StudyConfig, model_name: str, data_dir: Path) -> tuple[str, str, Path | None]:
    from segmodels.data.pack import check_num_classes
    from segmodels.study.matrix import arch_of

    backbone, head = arch_of(model_name)
    if not (data_dir / "train" / "images.npy").is_file():
        raise FileNotFoundError(
            f"packed train split not found: {data_dir / 'train' / 'images.npy'} (run `segmodels prepare`, or pass --data)"
        )
    check_num_classes(data_dir, cfg.model.num_classes)
    t = cfg.train
    for key in ("iterations", "batch_size", "log_every", "ckpt_every"):
        if getattr(t, key) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {getattr(t, key)}")
    teacher = None
    if t.distill_teacher:
        teacher = Path(t.distill_teacher)
        teacher = teacher / "checkpoint.pt" if teacher.is_dir() else teacher
        if not teacher.is_file():
            raise FileNotFoundError(f"train.distill_teacher: no checkpoint at {teacher}")
    return backbone, head, teacher


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


def _validate(model: nn.Module, split: Any, cfg: StudyConfig, device: torch.device, autocast: Any,
              info: DistInfo) -> dict[str, float]:
    from segmodels.data.loader import val_batches
    from segmodels.metrics import ConfusionMatrix, compute_metrics

    matrix = ConfusionMatrix(cfg.model.num_classes, 255, device=device)
    model.eval()
    with torch.inference_mode(), autocast():
        for images, labels, _ in val_batches(split, batch_size=cfg.evaluate.batch_size, device=device,
                                             rank=info.rank, world_size=info.world_size):
            matrix.update(model(images)["out"].argmax(1), labels)
    model.train()
    scores = compute_metrics(matrix.reduce_().matrix)
    return {"val_miou": float(scores["miou"]), "val_allacc": float(scores["allacc"])}


def train(cfg: StudyConfig, model_name: str, *, seed: int = 0, out: str | Path, data_dir: str | Path | None = None,
          restart: bool = False) -> TrainResult:
    """Train run ``model_name`` with ``cfg`` into ``out``, continuing from ``out/last.pt`` when it is there.

    ``model_name`` is a run of the study's matrix (or any plain {backbone}-{head}); training uses the run's
    effective config, :func:`segmodels.study.matrix.run_config` (a run's own effective config passes unchanged).
    ``data_dir`` defaults to ``data/packed/{data.dataset}``. Bad input raises ValueError or
    FileNotFoundError before any work; so does a ``last.pt`` written with other training-relevant
    settings (unless ``restart``, which discards the folder's previous state). A diverging loss
    raises :class:`NonFiniteLossError`; ``last.pt`` then keeps the last good state.
    """
    from segmodels.engine.cost import CostMeter, cost_metrics
    from segmodels.data.loader import PackedSplit, TrainLoader
    from segmodels.study.matrix import run_config, variant_of
    from segmodels.models import build_model, count_parameters
    from segmodels.report.results import head_label
    from segmodels.tracking import RunLogger, git_commit, tracking_uri

    out = Path(out)
    cfg = run_config(cfg, model_name)
    data_dir = Path(data_dir) if data_dir is not None else Path("data/packed") / cfg.data.dataset
    t = cfg.train
    backbone, head, teacher_path = _check_inputs(cfg, model_name, data_dir)
    info, device = init_distributed(t.device)
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    try:
        if t.batch_size % info.world_size:
            raise ValueError(f"train.batch_size {t.batch_size} is not divisible by {info.world_size} processes")
        from segmodels.data.pack import data_identity

        # The packed data's identity joins the run's params: resuming on other data under the same name is refused.
        params = run_params(cfg, model_name, seed) | {"run.data_identity": data_identity(data_dir)}
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if restart:
                ckpt.clear_run_state(out)
        barrier()
        state = ckpt.load_resume_state(out / "last.pt") if (out / "last.pt").is_file() else None
        if state is not None and (saved := state["params"].get("run.data_identity")) != params["run.data_identity"]:
            if "run.data_identity" in state["params"]:  # older resume states did not record it
                raise ValueError(
                    f"{out / 'last.pt'} was trained on other data than {data_dir} holds now (data identity {saved} "
                    f"-> {params['run.data_identity']}: the dataset was packed again from other files, at another "
                    "size or with other classes); not resuming it. Pass --restart to train from scratch on this data."
                )
            state["params"]["run.data_identity"] = params["run.data_identity"]
        if state is not None and (diff := ckpt.config_differences(state["params"], params)):
            raise ValueError(f"{out / 'last.pt'} was written with other settings; not resuming it (pass --restart "
                             "to discard it and start over):\n  " + "\n  ".join(diff))

        speed = speed_settings(t, device)
        _seed_everything(seed, t.deterministic)
        speed.apply_backend_flags(deterministic=t.deterministic)
        model = build_model(backbone, head, num_classes=cfg.model.num_classes, output_stride=cfg.model.output_stride,
                            aux=cfg.model.aux, pretrained=cfg.model.pretrained, bn_momentum=cfg.model.bn_momentum,
                            head_options=cfg.model.head_options)
        n_params = count_parameters(model)
        if t.sync_bn and info.enabled and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(device).train()
        if speed.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, t, fused=speed.fused_optimizer, foreach=speed.foreach)
        scaler = torch.amp.GradScaler(device.type, enabled=speed.amp_dtype == torch.float16)
        start = 0
        if state is not None:
            model.load_state_dict(state["model"])
            impl = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
            optimizer.load_state_dict(state["optimizer"])
            for group, keep in zip(optimizer.param_groups, impl, strict=True):
                group.update(keep)  # the kernel choice suits this machine, not the one that saved
            scaler.load_state_dict(state["scaler"])
            ckpt.set_rng_state(state["rng"])
            start = int(state["iteration"])
            if info.is_main:
                print(f"resuming from {out / 'last.pt'} at iteration {start}", flush=True)
            if state["world_size"] != info.world_size and info.is_main:
                warnings.warn(f"resuming with {info.world_size} processes where last.pt had {state['world_size']}: "
                              "the batches differ from an uninterrupted run", stacklevel=2)
        teacher = None
        if teacher_path is not None:
            teacher = ckpt.load_model_from_checkpoint(teacher_path, device=device,
                                                      expect_num_classes=cfg.model.num_classes)
            teacher.requires_grad_(False)
            if speed.channels_last:
                teacher.to(memory_format=torch.channels_last)
        plain = model
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if speed.compile:
            model = torch.compile(model)
        stepper = Stepper(model, optimizer, scaler, t, amp_dtype=speed.amp_dtype, device_type=device.type,
                          teacher=teacher)

        loader = TrainLoader(PackedSplit(data_dir / "train"), batch_size=t.batch_size // info.world_size,
                             crop_size=tuple(t.crop_size), scale_range=tuple(t.scale_range), device=device, seed=seed,
                             rank=info.rank, world_size=info.world_size, channels_last=speed.channels_last)
        val_split = PackedSplit(data_dir / "val") if (data_dir / "val" / "images.npy").is_file() else None

        logger = None
        if info.is_main:
            from segmodels.atomic import write_text_atomic

            write_text_atomic(out / "config.yaml", _yaml(cfg, model_name, seed))
            logger = RunLogger(out, experiment=cfg.tracking.experiment, uri=tracking_uri(cfg.tracking.uri),
                               run_name=f"{model_name}-seed{seed}", flush_seconds=cfg.tracking.flush_seconds,
                               tags={"model": model_name, "seed": seed, "study": cfg.experiment}).start()
            logger.log_params({**params, "model.backbone": backbone, "model.head": head, "model.params": n_params,
                               "model.head_label": head_label(head, cfg.model.head_options),
                               "run.variant": variant_of(model_name)})
            logger.set_tags({
                "git_commit": git_commit(), "torch_version": torch.__version__, "world_size": info.world_size,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            })
        loop = _Loop(cfg, stepper, plain, optimizer, scaler, info, out, params, device, logger)
        meter = CostMeter("train", device=device, gpus=info.world_size if device.type == "cuda" else 0,
                          path=out / "cost.json" if info.is_main else None, resume=start > 0)
        loop.meter = meter
        try:
            with meter:  # a killed run leaves its cost.json; the resumed run adds its own segment
                val = loop.run(loader, val_split, start)
                meter.images = t.iterations * t.batch_size  # what the final weights were trained on
            if info.is_main:
                ckpt.save_atomic({
                    "format": ckpt.CHECKPOINT_FORMAT, "model": plain.state_dict(), "run": model_name,
                    "backbone": backbone, "head": head,
                    "num_classes": cfg.model.num_classes, "output_stride": cfg.model.output_stride,
                    "aux": cfg.model.aux, "head_options": dict(cfg.model.head_options),
                    "config": config_to_dict(cfg), "iteration": t.iterations,
                }, out / "checkpoint.pt")
                loop.log.finish()
        except BaseException as exc:
            if logger is not None:
                logger.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        if logger is not None:
            cost = meter.result()
            logger.log_metrics(cost_metrics(cost, "cost/train_"), step=t.iterations)
            logger.set_tags({"cost.train_device": cost["device"]})
            for name in ("config.yaml", "train_log.csv") + (("checkpoint.pt",) if cfg.tracking.log_weights else ()):
                logger.log_artifact(out / name)
            logger.end("FINISHED")
        barrier()
        return TrainResult(out, t.iterations, logger.run_id if logger else None, val, plain)
    finally:
        cleanup()
        torch.use_deterministic_algorithms(flags[0])  # a library call leaves the process as it found it
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[1:]


class _Loop:
    """The iterations; host–device syncs only at logging, validation and checkpoint iterations."""

    def __init__(self, cfg, stepper, plain, optimizer, scaler, info, out, params, device, logger) -> None:
        self.cfg, self.t, self.stepper, self.plain = cfg, cfg.train, stepper, plain
        self.optimizer, self.scaler, self.info, self.out = optimizer, scaler, info, out
        self.params, self.device, self.logger = params, device, logger
        self.log: ckpt.TrainLog | None = None
        self.meter: Any = None  # the job's CostMeter: its record is saved with each last.pt

    def save_last(self, iteration: int) -> None:
        if self.meter is not None:  # first: wherever last.pt holds this state, cost.json holds its cost
            self.meter.checkpoint()
        ckpt.save_atomic({
            "format": ckpt.RESUME_FORMAT, "iteration": iteration, "model": self.plain.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "rng": ckpt.get_rng_state(),
            "config": config_to_dict(self.cfg), "params": self.params, "world_size": self.info.world_size,
        }, self.out / "last.pt")

    def validate(self, split: Any) -> dict[str, float]:
        broadcast_buffers(self.plain)
        return _validate(self.plain, split, self.cfg, self.device, self.stepper.autocast, self.info)

    def run(self, loader: Any, val_split: Any, start: int) -> dict[str, float]:
        t, info, total = self.t, self.info, self.t.iterations
        self.log = ckpt.TrainLog(self.out, LOG_COLUMNS, resume_iteration=start) if info.is_main else None
        progress = _Progress(total, start, batch=t.batch_size, enabled=info.is_main)
        sums: dict[str, torch.Tensor] = {}
        count, last_good, val = 0, start, {}
        bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        from segmodels.data.loader import WaitClock

        batches = loader.iterate(start)
        waited = WaitClock(batches)
        try:
            for step, (images, labels) in zip(range(start, total), waited, strict=False):
                lr = poly_lr(step, base_lr=t.lr, total=total, power=t.poly_power, warmup_iters=t.warmup_iters,
                             warmup_ratio=t.warmup_ratio)
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
                if first < 0 and is_ckpt and not state_is_finite(self.plain, info):
                    first = step  # finite loss, but the update overflowed: this state is not kept
                if first >= 0:
                    raise NonFiniteLossError(
                        f"loss is not finite at iteration {first + 1} of {total}; training stopped. "
                        f"The last good state (iteration {last_good}) is kept in {self.out / 'last.pt'}")
                if is_log:
                    names = sorted(sums)
                    means = all_reduce_mean(torch.stack([sums[k] for k in names]).float() / count).tolist()
                    row = {**dict(zip(names, means, strict=True)), "lr": lr, "images_per_s": progress.rate(iteration),
                           "data_wait_ms": waited.take() * 1000.0 / count}  # fmt: skip
                    sums, count = {}, 0
                    if is_val:
                        row.update(self.validate(val_split))
                        val = {k: row[k] for k in ("val_miou", "val_allacc")}
                        progress.rate(iteration)  # validation time is not training throughput
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
            broadcast_buffers(self.plain)  # every rank ends with the state rank 0 saves
        finally:
            progress.close()
            if hasattr(batches, "close"):
                batches.close()
        return val


def _yaml(cfg: StudyConfig, model_name: str, seed: int) -> str:
    import yaml

    return f"# Resolved config of {model_name} seed {seed}.\n" + yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
