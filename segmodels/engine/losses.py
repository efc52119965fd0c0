"""Training losses: pixel-wise cross-entropy with an auxiliary term, and distillation.

Cross-entropy averages over the labelled pixels (``average="labelled"``, PyTorch's mean with an ignore index) or
over every pixel of the batch, ignored ones counting zero (``"all"``: mmsegmentation's default,
``avg_non_ignore=False``, whose gradient is smaller by the batch's ignored fraction: Cityscapes' void pixels and
the padding of crops larger than the rescaled image). Distillation averages over the labelled pixels. A batch
whose pixels are all ``ignore_index`` contributes zero rather than 0/0 = NaN, so the non-finite-loss guard in
training fires on real divergence, never on an unlucky crop.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor

__all__ = ["AVERAGES", "IGNORE_INDEX", "cross_entropy", "distillation_loss", "segmentation_loss"]

IGNORE_INDEX = 255
AVERAGES = ("labelled", "all")  # train.loss_average


def cross_entropy(
    logits: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_INDEX, average: str = "labelled"
) -> Tensor:
    """Cross-entropy summed over the labelled pixels, divided by their number (``average="labelled"``; 0 when
    there are none) or by the number of all pixels, ignored ones included (``"all"``). Computed in float32."""
    if logits.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in size")
    if average not in AVERAGES:
        raise ValueError(f"train.loss_average must be one of {', '.join(AVERAGES)}, got {average!r}")
    total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    if average == "all":
        return total / max(labels.numel(), 1)
    count = (labels != ignore_index).sum().clamp_min(1)
    return total / count


def distillation_loss(
    student: Tensor, teacher: Tensor, labels: Tensor, *, temperature: float = 1.0, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Pixel-wise KL(teacher || student) on logits softened by ``temperature``, times T².

    Hinton et al. 2015, "Distilling the Knowledge in a Neural Network": the T² factor keeps the
    gradient scale independent of the temperature. Pixels labelled ``ignore_index`` (no ground
    truth, often image borders) are left out, as in the cross-entropy term.
    """
    t = float(temperature)
    log_p_student = F.log_softmax(student.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=1)
    per_pixel = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    valid = labels != ignore_index
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1) * (t * t)


def segmentation_loss(
    outputs: Mapping[str, Tensor],
    labels: Tensor,
    *,
    aux_weight: float = 0.4,
    ignore_index: int = IGNORE_INDEX,
    average: str = "labelled",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its parts (``main``, ``aux``; only those the outputs have); each term averaged as
    :func:`cross_entropy`'s ``average``.

    The auxiliary FCN head on the third stage follows PSPNet (Zhao et al. 2017, §3.4, weight 0.4). For OCR
    its logits are the soft object regions, so this one term is also the paper's region loss (Yuan et al.
    2020, §3.3, weight 0.4).
    """
    main = cross_entropy(outputs["out"], labels, ignore_index=ignore_index, average=average)
    parts = {"main": main}
    total = main
    if "aux" in outputs and aux_weight:
        parts["aux"] = cross_entropy(outputs["aux"], labels, ignore_index=ignore_index, average=average)
        total = total + aux_weight * parts["aux"]
    return total, {k: v.detach() for k, v in parts.items()}

