"""The optimizer a config chooses: SGD (the CNN recipe, unchanged) or AdamW with SegFormer's parameter groups —
backbone at lr, the rest at lr × head_lr_mult, no weight decay on norms, biases and position parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segmodels.engine.step import ADAMW_BETAS, NO_DECAY_NAMES, Stepper, build_optimizer
from segmodels.models import build_model
from segmodels.study.config import ConfigError, TrainConfig, from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

# mmsegmentation's segformer_mit-b0_8xb2-160k_ade20k-512x512: AdamW lr 6e-5, weight decay 0.01, head lr × 10.
SEGFORMER = {"optimizer": "adamw", "lr": 6e-5, "weight_decay": 0.01, "head_lr_mult": 10.0}


def _group_of(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, dict]:
    """Each parameter's name → the group it landed in (every trainable parameter exactly once)."""
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(where) == sum(len(g["params"]) for g in optimizer.param_groups)
    names = dict(model.named_parameters())
    assert set(where) == {id(p) for p in names.values()}
    return {name: where[id(p)] for name, p in names.items()}


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:  # what Stepper does every step
        group["lr"] = lr * group["lr_mult"]


def _is_norm(model: nn.Module, name: str) -> bool:
    module = model.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm))


def test_adamw_groups_for_segformer():
    model = build_model("mitb0", "segformer", num_classes=19, output_stride=32, aux=True)
    tcfg = TrainConfig(**SEGFORMER)
    optimizer = build_optimizer(model, tcfg)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["betas"] == ADAMW_BETAS
    assert len(optimizer.param_groups) == 4  # backbone/rest × decayed/not
    _set_lr(optimizer, tcfg.lr)
    groups = _group_of(optimizer, model)
    for name, group in groups.items():
        backbone = name.startswith("backbone.")
        assert group["lr"] == pytest.approx(6e-5 if backbone else 6e-4), name  # head and aux head: × 10
        no_decay = _is_norm(model, name) or name.endswith(".bias")
        assert group["weight_decay"] == (0.0 if no_decay else 0.01), name
    # Spot checks, by the released code's names.
    assert groups["backbone.body.block1.0.norm1.weight"]["weight_decay"] == 0.0
    assert groups["backbone.body.block1.0.attn.norm.weight"]["weight_decay"] == 0.0  # the reduction's LayerNorm
    assert groups["backbone.body.patch_embed1.norm.bias"]["weight_decay"] == 0.0
    assert groups["backbone.body.block1.0.attn.sr.weight"]["weight_decay"] == 0.01
    assert groups["backbone.body.block1.0.mlp.dwconv.dwconv.weight"]["weight_decay"] == 0.01
    assert groups["head.linear_fuse.1.weight"]["weight_decay"] == 0.0  # the decoder's BatchNorm
    assert groups["head.linear_c.0.proj.weight"]["weight_decay"] == 0.01
    assert groups["head.linear_c.0.proj.weight"]["lr"] == groups["aux_head.classifier.weight"]["lr"]
    assert groups["aux_head.classifier.weight"]["lr"] == pytest.approx(6e-4)


class _WithPositions(nn.Module):
    """A backbone with the position parameters of PVT (pos_block: a conv) and ViT (pos_embed, cls_token)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.pos_block = nn.ModuleList([nn.Conv2d(4, 4, 3, groups=4)])
        self.backbone.pos_embed = nn.Parameter(torch.zeros(1, 16, 4))
        self.backbone.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.backbone.proj = nn.Linear(4, 4)
        self.head = nn.Conv2d(4, 2, 1)


def test_position_parameters_get_no_decay():
    model = _WithPositions()
    groups = _group_of(build_optimizer(model, TrainConfig(**SEGFORMER)), model)
    decayed = sorted(name for name, group in groups.items() if group["weight_decay"] > 0)
    assert decayed == ["backbone.proj.weight", "head.weight"]
    assert {"pos_block", "pos_embed", "cls_token"} <= set(NO_DECAY_NAMES)


def test_sgd_is_unchanged_by_default():
    tcfg = TrainConfig()
    assert (tcfg.optimizer, tcfg.lr, tcfg.momentum, tcfg.weight_decay, tcfg.head_lr_mult) == ("sgd", 0.01, 0.9, 1e-4, 1.0)
    model = build_model("resnet18", "ppm", num_classes=19)
    optimizer = build_optimizer(model, tcfg)
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.9
    _set_lr(optimizer, tcfg.lr)
    for name, group in _group_of(optimizer, model).items():
        assert group["lr"] == 0.01 and group["momentum"] == 0.9
        assert group["weight_decay"] == (0.0 if _is_norm(model, name) or name.endswith(".bias") else 1e-4), name
    ten = build_optimizer(model, TrainConfig(head_lr_mult=10.0))
    _set_lr(ten, 0.01)
    assert _group_of(ten, model)["head.bottleneck.0.weight"]["lr"] == pytest.approx(0.1)


def test_the_config_chooses_the_optimizer():
    assert from_dict(TrainConfig, {"optimizer": "adamw"}).optimizer == "adamw"
    with pytest.raises(ConfigError, match="'train.optimizer' must be one of sgd, adamw, got 'adam'"):
        from_dict(TrainConfig, {"optimizer": "adam"}, prefix="train.")


def test_an_adamw_step_updates_backbone_and_head():
    torch.manual_seed(0)
    model = build_model("mitb0", "segformer", num_classes=3, output_stride=32, aux=False)
    tcfg = TrainConfig(**SEGFORMER, amp=False)
    optimizer = build_optimizer(model, tcfg)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = Stepper(model.train(), optimizer, scaler, tcfg, amp_dtype=None, device_type="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 3, (2, 64, 64))
    loss, _ = step(images, labels, tcfg.lr)
    assert torch.isfinite(loss)
    after = model.state_dict()
    for key in ("backbone.body.block1.0.attn.q.weight", "head.linear_c.3.proj.weight", "head.classifier.bias"):
        assert not torch.equal(before[key], after[key]), key
    assert sorted({round(g["lr"] / tcfg.lr) for g in optimizer.param_groups}) == [1, 10]


def test_no_decay_none_decays_every_parameter():
    """mmsegmentation's CNN configs have no paramwise_cfg: weight decay on norm weights and biases too."""
    model = build_model("resnet18", "ppm", num_classes=19)
    groups = _group_of(build_optimizer(model, TrainConfig(weight_decay=5e-4, no_decay="none")), model)
    assert {g["weight_decay"] for g in groups.values()} == {5e-4}
    assert groups["backbone.body.bn1.weight"]["weight_decay"] == groups["head.classifier.bias"]["weight_decay"] == 5e-4


def test_no_decay_segformer_follows_its_paramwise_cfg():
    """NVlabs' SegFormer configs: decay_mult 0 for names holding 'norm' or 'pos_block', decay everywhere else
    (biases, and the decoder's BatchNorm, which mmsegmentation names linear_fuse.bn)."""
    model = build_model("mitb0", "segformer", num_classes=19, output_stride=32, aux=False)
    groups = _group_of(build_optimizer(model, TrainConfig(**SEGFORMER, no_decay="segformer")), model)
    undecayed = {name for name, group in groups.items() if group["weight_decay"] == 0.0}
    assert undecayed == {name for name in groups if "norm" in name}
    # MiT-B0's LayerNorms, weight and bias: norm1 and norm2 of its 8 blocks, attn.norm of the 6 blocks with a
    # spatial reduction (stages 1-3), the 4 patch embeddings' and the 4 stages' norms
    assert len(undecayed) == 2 * (8 + 8 + 6 + 4 + 4)
    assert groups["backbone.body.block1.0.attn.q.bias"]["weight_decay"] == 0.01
    assert groups["head.linear_fuse.1.weight"]["weight_decay"] == 0.01
    positions = _WithPositions()
    kept = _group_of(build_optimizer(positions, TrainConfig(**SEGFORMER, no_decay="segformer")), positions)
    assert sorted(n for n, g in kept.items() if g["weight_decay"] == 0.0) == ["backbone.pos_block.0.bias",
                                                                             "backbone.pos_block.0.weight"]  # fmt: skip
