"""Worst-group and mean per-group accuracy over (class, bias attribute) groups, for shortcut
studies (Waterbirds: bird type x background; the group robustness literature's headline
numbers, as GroupDRO, JTT and DFR report them).

Multi-label data are scored per (image, class) pair: :func:`pair_predictions` turns scores
into a predicted class per pair (the pair's class when its sigmoid is >= the threshold, else -1), so a
pair is right when its class is detected (at 0.5, or at a decision threshold chosen on val)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from attnguide.errors import AttnGuideError


def group_accuracy(correct: Tensor, total: Tensor) -> Tensor:
    """Accuracy per group, NaN for a group without examples."""
    return torch.where(total > 0, correct.double() / total.clamp_min(1), torch.full_like(total, float("nan"),
                                                                                       dtype=torch.float64))


class WorstGroupAccuracy(Metric):
    """The lowest accuracy among the (class, bias) groups that hold at least one example.

    Group of an example: ``target * num_bias + bias``. ``update(preds, target, bias)``:
    preds (N,) class indices or (N, C) scores (arg-max), target (N,) class indices,
    bias (N,) attribute indices in ``[0, num_bias)``. :meth:`group_accuracies` gives
    the (num_classes, num_bias) table (NaN where a group is empty).

    Args:
        num_classes: number of classes. num_bias: number of bias attribute values.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, num_bias: int, **kwargs) -> None:
        if num_classes < 1 or num_bias < 1:
            raise AttnGuideError(f"WorstGroupAccuracy needs num_classes >= 1 and num_bias >= 1, got "
                                 f"{num_classes} and {num_bias}")
        super().__init__(**kwargs)
        self.num_classes, self.num_bias = int(num_classes), int(num_bias)
        groups = self.num_classes * self.num_bias
        self.add_state("correct", default=torch.zeros(groups, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(groups, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, bias: Tensor) -> None:
        if preds.dim() == 2:
            preds = preds.argmax(dim=1)
        if not (preds.shape == target.shape == bias.shape) or preds.dim() != 1:
            raise AttnGuideError(f"preds (N,) or (N, C), target (N,) and bias (N,) must agree, got "
                                 f"{tuple(preds.shape)}, {tuple(target.shape)}, {tuple(bias.shape)}")
        target, bias = target.long(), bias.long()
        for name, values, n in (("target", target, self.num_classes), ("bias", bias, self.num_bias)):
            if len(values) and (int(values.min()) < 0 or int(values.max()) >= n):
                raise AttnGuideError(f"{name} values must lie in [0, {n}), got {values.min()}..{values.max()}; "
                                     f"check num_classes / num_bias")
        group = target * self.num_bias + bias
        size = self.num_classes * self.num_bias
        self.total += torch.bincount(group, minlength=size).to(self.total)
        self.correct += torch.bincount(group[preds.long() == target], minlength=size).to(self.correct)

    def group_accuracies(self) -> Tensor:
        """(num_classes, num_bias) accuracy of each group, NaN where empty."""
        return group_accuracy(self.correct, self.total).view(self.num_classes, self.num_bias)

    def _defined(self) -> Tensor:
        acc = group_accuracy(self.correct, self.total)
        return acc[~acc.isnan()]

    def compute(self) -> Tensor:
        acc = self._defined()
        return acc.min() if len(acc) else torch.tensor(float("nan"), dtype=torch.float64)

    def mean_group(self) -> Tensor:
        """Mean of the non-empty groups' accuracies (every group weighs the same)."""
        acc = self._defined()
        return acc.mean() if len(acc) else torch.tensor(float("nan"), dtype=torch.float64)

    def groups_counted(self) -> int:
        """How many groups hold at least one example."""
        return int((self.total > 0).sum())


class MeanGroupAccuracy(WorstGroupAccuracy):
    """The mean accuracy over the non-empty (class, bias) groups (same inputs as
    :class:`WorstGroupAccuracy`)."""

    def compute(self) -> Tensor:
        return self.mean_group()


def pair_predictions(scores: Tensor, index: Tensor, classes: Tensor, multilabel: bool,
                     threshold: float = 0.5) -> Tensor:
    """The predicted class of each (image, class) pair, for the group metrics.

    Args:
        scores: (N, C) logits of the N images.
        index: (P,) image of each pair. classes: (P,) class of each pair.
        multilabel: sigmoid outputs, scored per pair (the pair's class when its sigmoid is
            >= ``threshold``, else -1); single-label: the image's arg-max.
        threshold: the multi-label decision threshold (a probability).

    Returns:
        (P,) int64 predicted classes, to compare with ``classes``.
    """
    index, classes = index.long(), classes.long()
    if not multilabel:
        return scores.argmax(dim=1)[index]
    if not 0 < threshold < 1:
        raise AttnGuideError(f"the decision threshold is a probability in (0, 1), got {threshold}")
    hit = scores[index, classes] >= math.log(threshold / (1 - threshold))  # sigmoid >= threshold
    return torch.where(hit, classes, torch.full_like(classes, -1))
