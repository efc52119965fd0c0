"""Checks that need a CUDA GPU: graph replay, event timing, the fp16 gradient scaler, channels_last and compile,
NVML energy, and GPU augmentation against the CPU's. Each runs in seconds on one GPU; skipped without one.

Comparisons run in full fp32: the ``strict_fp32`` fixture turns TF32 off (cuDNN convolutions use it by default,
rounding operands to 10 mantissa bits, ~1e-3 relative) and fixes cuDNN's algorithm choice, then restores the
process's settings.
"""

from __future__ import annotations

import copy
import importlib.util
import time

import pytest
import torch
from torch import nn

from segmodels.data.loader import TrainLoader
from segmodels.engine.benchmark import _torch_forward, benchmark_model, parse_mode
from segmodels.engine.cost import CostMeter
from segmodels.engine.distributed import DistInfo
from segmodels.engine.step import Stepper, build_optimizer, speed_settings, state_is_finite
from segmodels.models import build_model
from segmodels.study.config import TrainConfig

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

DEVICE = torch.device("cuda", 0)
SHAPE = (2, 3, 128, 256)


@pytest.fixture(autouse=True)
def strict_fp32():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    strict = {(cudnn, "benchmark"): False, (cudnn, "deterministic"): True, (cudnn, "allow_tf32"): False,
              (matmul, "allow_tf32"): False}  # fmt: skip
    saved = {key: getattr(*key) for key in strict}
    for (obj, name), value in strict.items():
        setattr(obj, name, value)
    yield
    for (obj, name), value in saved.items():
        setattr(obj, name, value)


def _model(backbone: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(backbone, "fcn", pretrained=None).to(DEVICE)


def _input(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def _eager(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)["out"]


class _KeepOutputs(nn.Module):
    """Holds on to the last outputs: in a captured graph those are the static tensors each replay rewrites."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.outputs = model, None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.outputs = self.model(x)
        return self.outputs


def test_cudagraph_replay_equals_eager():
    model = _model("resnet18").eval()  # logits of a few units: 1e-5 is a strict bound here
    keep = _KeepOutputs(model)
    x = _input(0)
    # The benchmark's "cudagraphs" mode: warm-up on a side stream, one capture, replay as the timed callable.
    replay = _torch_forward(keep, x, parse_mode("cudagraphs"), DEVICE, torch.float16)
    static_out = keep.outputs["out"]
    for seed in (0, 1):  # the second input is written into the captured input tensor, as a replay loop would
        x.copy_(_input(seed))
        replay()
        torch.testing.assert_close(static_out.clone(), _eager(model, x), atol=1e-5, rtol=1e-5)


def test_cuda_event_times_are_positive_and_ordered():
    model = build_model("mobilenetv2", "fcn", pretrained=None)
    result = benchmark_model(
        model, size=SHAPE[2:], batch_size=SHAPE[0], modes=["fp32", "cudagraphs"], warmup=5, repeats=30,
        device=DEVICE, log=None,
    )  # fmt: skip
    assert result["device"]["type"] == "cuda"
    for name in ("fp32", "cudagraphs"):
        m = result["modes"][name]
        assert m["status"] == "ok", f"{name}: {m.get('reason')}"
        assert len(m["times_ms"]) == 30 and all(t > 0 for t in m["times_ms"])
        assert 0 < m["min_ms"] <= m["median_ms"] <= m["p90_ms"] <= m["max_ms"]
        assert m["peak_memory_mb"] > 0 and m["memory"] == "cuda_max_allocated"


def test_fp16_grad_scaler_steps_and_skips_inf():
    model = _model("mobilenetv2").train()
    tcfg = TrainConfig()
    speed = speed_settings(tcfg, DEVICE)  # the optimizer as training builds it on this GPU (fused SGD)
    optimizer = build_optimizer(model, tcfg, fused=speed.fused_optimizer, foreach=speed.foreach)
    # fp16 whatever the GPU supports; a small initial scale, so that a normal step cannot overflow by chance
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    step = Stepper(model, optimizer, scaler, tcfg, amp_dtype=torch.float16, device_type="cuda")
    x = _input(0)
    labels = torch.randint(0, 19, (SHAPE[0], *SHAPE[2:]), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    names = [name for name, _ in model.named_parameters()]

    def snapshot() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        state = {n: optimizer.state.get(p, {}) for n, p in model.named_parameters()}  # get: state is a defaultdict
        momentum = {n: s["momentum_buffer"].clone() for n, s in state.items() if "momentum_buffer" in s}
        return params, momentum

    def changed(before: dict[str, torch.Tensor]) -> list[str]:
        return [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]

    def skipped_step(scale: float) -> None:
        """A step whose gradient is inf changes neither weights nor optimizer state, and backs the scale off."""
        params, momentum = snapshot()
        hook = next(model.parameters()).register_hook(lambda grad: torch.full_like(grad, float("inf")))
        try:
            loss, _ = step(x, labels, lr=0.01)
        finally:
            hook.remove()
        assert torch.isfinite(loss)  # only the gradient was made inf
        assert scaler.get_scale() == scale  # halved: the default backoff factor
        assert changed(params) == [], "a step with an inf gradient changed the weights"
        after = snapshot()[1]
        assert after.keys() == momentum.keys() and all(torch.equal(after[n], momentum[n]) for n in momentum), (
            "a skipped step changed the optimizer's momentum state"
        )

    # First: fp16 training often overflows at its start, and the state must stay as it was (fused SGD
    # allocates the buffers with empty_like on its first step, and the next step would read them).
    skipped_step(2.0**9)
    params, _ = snapshot()
    loss, _ = step(x, labels, lr=0.01)
    assert torch.isfinite(loss) and scaler.get_scale() == 2.0**9
    moved = changed(params)
    assert "head.classifier.weight" in moved and len(moved) > len(names) // 2, f"only {moved} changed"
    assert state_is_finite(model, DistInfo()) and snapshot()[1], "no momentum after a normal step"
    skipped_step(2.0**8)  # and once momentum exists


def test_channels_last_and_compile_match_eager():
    model = _model("resnet18").eval()
    x = _input(0)
    ref = _eager(model, x)
    channels_last = _torch_forward(copy.deepcopy(model), x, parse_mode("channels_last"), DEVICE, torch.float16)
    torch.testing.assert_close(channels_last(), ref, atol=1e-4, rtol=1e-4)
    if importlib.util.find_spec("triton") is None:
        pytest.skip("channels_last matched eager; compile part skipped: triton is not importable")
    compiled = _torch_forward(copy.deepcopy(model), x, parse_mode("compile"), DEVICE, torch.float16)
    try:
        compiled()  # compiles
        torch.testing.assert_close(compiled(), ref, atol=1e-3, rtol=1e-3)
    finally:
        torch._dynamo.reset()


def test_nvml_energy_is_positive_or_absent():
    a, b, c = (torch.randn(4096, 4096, device=DEVICE) for _ in range(3))
    with CostMeter("x", device=DEVICE, sample_seconds=0.25) as meter:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:
            for _ in range(10):
                torch.mm(a, b, out=c)
            torch.cuda.synchronize(DEVICE)
    record = meter.result()
    if record["energy_wh"] is None:
        assert record["energy_source"] is None
        if importlib.util.find_spec("pynvml") is None:
            pytest.skip("no energy recorded: nvidia-ml-py (import pynvml) is not installed")
        pytest.skip("no energy recorded: NVML gives no power reading for this GPU (a MIG slice, or no sensor)")
    assert record["energy_wh"] > 0 and record["energy_source"].startswith("nvml")
    watts = record["energy_wh"] * 3600 / record["wall_s"]
    assert 1 < watts < 2000, f"mean power {watts:.1f} W: a unit is wrong"  # an H100/H200 board peaks at 700 W


def test_gpu_augmentation_equals_cpu(tmp_path):
    from conftest import make_packed_dataset

    split = make_packed_dataset(tmp_path / "tiny", n_train=8, n_val=1, size=SHAPE[2:]) / "train"
    # Parameters are drawn on the CPU from (seed, step, rank) whatever the device (segmodels.data.augment).
    loaders = [TrainLoader(split, batch_size=4, crop_size=(96, 160), device=d, seed=3) for d in ("cpu", DEVICE)]
    for step in range(3):
        (x_cpu, y_cpu), (x_gpu, y_gpu) = (loader.batch(step) for loader in loaders)
        assert x_gpu.device.type == "cuda" and x_gpu.shape == x_cpu.shape == (4, 3, 96, 160)
        assert torch.equal(y_gpu.cpu(), y_cpu)
        # Bilinear weights round differently by device (~1e-5 px); at 255-level edges that is < 1e-3 normalised.
        diff = (x_gpu.cpu() - x_cpu).abs()
        assert float(diff.max()) < 1e-3 and float(diff.mean()) < 1e-4, (float(diff.max()), float(diff.mean()))
