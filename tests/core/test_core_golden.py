"""Golden values on a fixed-weight model whose attention can be worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnguide import GuidedAttention

A0 = [[1.0, 2.0], [3.0, 4.0]]
A1 = [[4.0, 3.0], [2.0, 1.0]]
W = [[1.0, -1.0], [0.5, 2.0]]


class Fixed(nn.Module):
    """'feat' passes the (1, 2, 2, 2) input through; logits = W @ GAP(feat)."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(W))

    def forward(self, x):
        return self.fc(self.feat(x).mean(dim=(2, 3)))


def image():
    return torch.tensor([[A0, A1]])  # (1, 2, 2, 2)


# By hand: Grad-CAM weights are W_c / (h w) = W_c / 4.
# class 0: relu(0.25 A0 - 0.25 A1) = relu(0.25 [[-3, -1], [1, 3]]) = [[0, 0], [0.25, 0.75]]
# class 1: 0.125 A0 + 0.5 A1 = [[2.125, 1.75], [1.375, 1.0]]
GRADCAM = [[[0.0, 0.0], [0.25, 0.75]], [[2.125, 1.75], [1.375, 1.0]]]


@pytest.mark.parametrize("create_graph", [False, True])
def test_gradcam_by_hand(create_graph):
    guide = GuidedAttention(Fixed(), layer="feat")
    maps = guide.attention(image(), torch.tensor([[0, 1]]), create_graph=create_graph)
    assert torch.allclose(maps[0], torch.tensor(GRADCAM))


def test_cam_and_hirescam_by_hand():
    guide = GuidedAttention(Fixed(), layer="feat", cam="cam")
    # CAM = relu(W_c . A) = 4 x Grad-CAM here
    assert torch.allclose(guide.attention(image(), torch.tensor([1]))[0, 0], 4 * torch.tensor(GRADCAM[1]))
    guide = GuidedAttention(Fixed(), layer="feat", cam="hirescam")
    # HiResCAM = relu(sum_k G_k A_k) with G = W_c / 4: equal to Grad-CAM when G is constant
    assert torch.allclose(guide.attention(image(), torch.tensor([0]))[0, 0], torch.tensor(GRADCAM[0]))


def test_normalised_resized_maps():
    guide = GuidedAttention(Fixed(), layer="feat")
    maps = guide.attention(image(), torch.tensor([0]), resize=True, normalize=True)
    assert torch.allclose(maps[0, 0], torch.tensor([[0.0, 0.0], [1 / 3, 1.0]]))


def test_losses_by_hand():
    guide = GuidedAttention(Fixed(), layer="feat", alpha=1.0, omega=10.0)
    labels = torch.tensor([[1.0, 0.0]])
    masks = torch.tensor([[[1, 1], [0, 255]]])
    out = guide(image(), labels, masks)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # L_cl: BCE of logits W @ GAP(A) = [2.5 - 2.5, 1.25 + 5.0] = [0, 6.25]
    cls = -(math.log(sig(0.0)) + math.log(1 - sig(6.25))) / 2
    # attention of class 0, normalised: [[0, 0], [1/3, 1]]; T = sigmoid(10 (att - 0.5))
    att = [[0.0, 0.0], [1 / 3, 1.0]]
    t = [[sig(10 * (a - 0.5)) for a in row] for row in att]
    erased0 = [[A0[i][j] * (1 - t[i][j]) for j in range(2)] for i in range(2)]
    erased1 = [[A1[i][j] * (1 - t[i][j]) for j in range(2)] for i in range(2)]
    gap0, gap1 = sum(map(sum, erased0)) / 4, sum(map(sum, erased1)) / 4
    am = sig(W[0][0] * gap0 + W[0][1] * gap1)
    # L_e over the 3 labelled pixels: target class 0 <-> mask value 1
    ext = ((0 - 1) ** 2 + (0 - 1) ** 2 + (1 / 3 - 0) ** 2) / 3
    assert out.losses["cls"].item() == pytest.approx(cls, rel=1e-5)
    assert out.losses["am"].item() == pytest.approx(am, rel=1e-5)
    assert out.losses["ext"].item() == pytest.approx(ext, rel=1e-5)
    assert out.loss.item() == pytest.approx(cls + am + 10 * ext, rel=1e-5)
    assert out.pairs.tolist() == [[0, 0]]
    assert out.stats["attention_area"].item() == pytest.approx(sum(map(sum, t)) / 4, rel=1e-5)
