"""Gradient accumulation (train.accumulate) and the micro-batch search (train.micro_batch: auto), on the CPU."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
from conftest import small_config
from torch import nn
from toys import ToyHead

from segmodels.engine.micro_batch import Accumulation, OutOfMemory, accumulation, find_micro_batch, oom_message
from segmodels.engine.step import Stepper, build_optimizer
from segmodels.study.config import ConfigError, TrainConfig, study_from_dict


class _NoNorm(nn.Module):
    """Convolutions, no BatchNorm: its gradient does not depend on how the batch is split."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.head = ToyHead(8, 5)
        self.aux = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = torch.relu(self.body(x))
        return {"out": self.head(f)["out"], "aux": self.aux(f)}


def _batch(n: int = 4):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 12, 10, generator=g)
    labels = torch.randint(0, 5, (n, 12, 10), generator=g)
    labels[0, :8] = 255  # the images have different numbers of labelled pixels
    labels[3, :, :3] = 255
    return images, labels


@pytest.mark.parametrize("average", ["labelled", "all"])
@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_step_equals_the_full_batch(average, k):
    torch.manual_seed(0)
    model = _NoNorm()
    tcfg = TrainConfig(loss_average=average, amp=False, momentum=0.9, weight_decay=1e-4)
    results = []
    for accumulate in (1, k):
        m = copy.deepcopy(model)
        step = Stepper(m, build_optimizer(m, tcfg), torch.amp.GradScaler("cpu", enabled=False), tcfg,
                       amp_dtype=None, device_type="cpu", accumulate=accumulate)  # fmt: skip
        losses = [step(*_batch(), lr=0.5) for _ in range(2)]  # two steps: momentum carries the first
        results.append((m, losses))
    (full, full_losses), (acc, acc_losses) = results
    for (name, a), b in zip(full.named_parameters(), acc.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    for (loss_a, parts_a), (loss_b, parts_b) in zip(full_losses, acc_losses, strict=True):
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(parts_b["aux"], parts_a["aux"], rtol=1e-5, atol=1e-6)


def test_a_batch_that_does_not_split_is_refused():
    model = _NoNorm()
    tcfg = TrainConfig(amp=False)
    step = Stepper(model, build_optimizer(model, tcfg), torch.amp.GradScaler("cpu", enabled=False), tcfg,
                   amp_dtype=None, device_type="cpu", accumulate=3)  # fmt: skip
    with pytest.raises(ValueError, match="4 images cannot be split into 3 equal micro-batches"):
        step(*_batch(), lr=0.1)


@pytest.mark.parametrize(("train", "message"), [
    ({"batch_size": 8, "accumulate": 3}, r"'train.accumulate' 3 does not divide 'train.batch_size' 8"),
    ({"batch_size": 8, "micro_batch": 16}, r"'train.micro_batch' 16 must divide 'train.batch_size' 8"),
    ({"batch_size": 8, "micro_batch": 3}, r"'train.micro_batch' 3 must divide"),
    ({"batch_size": 8, "micro_batch": 2, "accumulate": 2}, r"micro_batch' 2 and 'train.accumulate' 2 disagree"),
    ({"batch_size": 8, "micro_batch": "auto", "accumulate": 2}, r"auto chooses the accumulation itself"),
    ({"micro_batch": "most"}, r"train.micro_batch"),
])  # fmt: skip
def test_bad_settings_are_named_before_any_work(train, message):
    with pytest.raises(ConfigError, match=f"study.yaml.*{message}"):
        study_from_dict({"train": {"crop_size": [64, 64], **train}, "data": {"size": [64, 64]}}, where="study.yaml")


def test_settings_give_the_micro_batch():
    assert accumulation(None, 1, 8) == Accumulation(8, 1)
    assert accumulation(None, 4, 8) == Accumulation(2, 4)
    assert accumulation(2, 1, 8) == Accumulation(2, 4)
    assert accumulation("auto", 1, 8) is None


def test_search_keeps_the_largest_micro_batch_that_fits_and_leaves_no_trace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 1))
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    tried = []

    def probe(m, micro, crop, device, amp_dtype, channels_last):
        tried.append(micro)
        if micro > 3:  # the card: more than 3 crops do not fit
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        from segmodels.engine import micro_batch

        micro_batch._probe(m, micro, crop, device, amp_dtype, channels_last)

    found = find_micro_batch(model, 12, (16, 16), torch.device("cpu"), probe=probe)
    assert found == Accumulation(3, 4, searched=True) and tried == [12, 6, 4, 3]
    assert torch.equal(torch.get_rng_state(), rng)  # the random probe images drew from a forked generator
    for key, value in before.items():  # BatchNorm's running statistics are as they were
        assert torch.equal(model.state_dict()[key], value), key
    assert all(p.grad is None for p in model.parameters())

    def never(*_):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(OutOfMemory, match=r"not even one 16×16 crop fits.*tried 12: out of memory"):
        find_micro_batch(model, 12, (16, 16), torch.device("cpu"), probe=never)


def test_out_of_memory_message_names_the_setting():
    line = oom_message("resnet101-ppm", Accumulation(4, 2), (512, 1024), "bf16", torch.device("cpu"))
    assert "\n" not in line
    assert "resnet101-ppm: micro-batch 4 (accumulate 2) of 512×1024 crops in bf16" in line
    assert "train.micro_batch: auto" in line and "last.pt" in line


def test_training_records_the_accumulation(tmp_path, packed_data, mlflow_uri):
    from mlflow import MlflowClient

    from segmodels.engine.train import train
    from segmodels.tracking import read_run_id

    cfg = small_config(train={"iterations": 2, "batch_size": 2, "micro_batch": "auto", "log_every": 1,
                              "ckpt_every": 2})  # fmt: skip
    cfg.tracking.uri = mlflow_uri
    result = train(cfg, "mobilenetv2-fcn", out=tmp_path / "run", data_dir=packed_data)
    with (tmp_path / "run" / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["micro_batch"], r["accumulate"]) for r in rows} == {("2", "1")}  # the CPU has no limit to find
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["accumulation"] == {"micro_batch": 2, "accumulate": 1, "searched": True}
    tags = MlflowClient(mlflow_uri).get_run(read_run_id(tmp_path / "run")).data.tags
    assert tags["train.micro_batch"] == "2" and tags["train.micro_batch_searched"] == "true"
    assert result.iteration == 2


def test_an_out_of_memory_step_ends_with_one_line_and_keeps_last_pt(tmp_path, packed_data, monkeypatch):
    from segmodels.engine import step as step_module
    from segmodels.engine.train import OutOfMemory as TrainOOM
    from segmodels.engine.train import train

    cfg = small_config(train={"iterations": 4, "batch_size": 2, "accumulate": 2, "ckpt_every": 2})
    cfg.tracking.enabled = False
    real = step_module.Stepper.__call__
    calls = []

    def runs_out_at_step_three(self, images, labels, lr):
        calls.append(1)
        if len(calls) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real(self, images, labels, lr)

    monkeypatch.setattr(step_module.Stepper, "__call__", runs_out_at_step_three)
    with pytest.raises(TrainOOM) as caught:
        train(cfg, "mobilenetv2-fcn", out=tmp_path / "run", data_dir=packed_data)
    message = str(caught.value)
    assert "\n" not in message and "mobilenetv2-fcn: micro-batch 1 (accumulate 2) of 64×64 crops in fp32" in message
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["iteration"] == 2  # the state before it
