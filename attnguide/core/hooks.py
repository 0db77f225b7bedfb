"""State-restoring context managers (activation capture, frozen BatchNorm) and the
state-dict hooks that give `GuidedAttention` the bare model's keys.

Hooks live only inside a ``with`` block and are removed in ``finally``:
nothing stays on the user's model after a call, an exception, or garbage
collection, and two wrappers on one model never see each other's hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnguide.errors import AttnGuideError


class ActivationCapture:
    """Keeps the output of one module during a forward pass, attached to the graph.

    The module's consumers receive a *clone* of the output, so an in-place op
    downstream (``ReLU(inplace=True)`` after a conv, say) cannot corrupt the
    captured tensor. With ``start_grad=True`` the forward may run under
    ``torch.no_grad()``: the hook turns gradient recording on from this layer
    onwards, so an inference CAM builds a graph only for the head.

    Example:
        >>> cap = ActivationCapture(model.layer4)
        >>> with cap:
        ...     logits = model(images)
        >>> cap.output.shape  # (B, 512, 7, 7)
    """

    def __init__(self, module: nn.Module, start_grad: bool = False) -> None:
        self.module = module
        self.start_grad = start_grad
        self.output: Tensor | None = None
        self.calls = 0
        self._handle = None

    def _hook(self, module: nn.Module, inputs, output):
        if not isinstance(output, Tensor):
            raise AttnGuideError(
                f"the target layer {type(module).__name__} returns {type(output).__name__}, not a "
                "tensor; pick a layer whose output is a feature map (B, K, h, w) or tokens (B, N, D)"
            )
        self.calls += 1
        if self.start_grad:
            torch.set_grad_enabled(True)
            output = output.detach()
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        self.output = output
        return output.clone()

    def __enter__(self) -> ActivationCapture:
        self.output, self.calls = None, 0
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the hook; safe to call twice."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Put every BatchNorm layer in eval mode (running statistics, no update)
    and restore each one's own ``training`` flag afterwards, even on error."""
    if not enabled:
        yield
        return
    saved = [
        (m, m.training)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]
    try:
        for m, _ in saved:
            m.train(False)
        yield
    finally:
        for m, flag in saved:
            m.train(flag)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Switch ``model`` to eval mode and restore every module's own flag."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


class IsolatedBatchNorm:
    """While active, every train-mode BatchNorm that runs *after* ``capture``'s layer
    normalises with its batch statistics held constant in the backward pass.

    Forward values and running statistics are unchanged. Without this, the
    gradient of the summed scores with respect to one image's activations picks
    up every other image's score through the batch mean and variance, so batched
    Grad-CAM weights would mix images; with it, each image's gradient is its own
    (as in eval mode). The hooks live only inside the ``with`` block.
    """

    def __init__(self, model: nn.Module, capture: ActivationCapture) -> None:
        self.model, self.capture = model, capture
        self.isolated = 0
        self._handles: list = []

    def _hook(self, module: nn.modules.batchnorm._BatchNorm, inputs, output):
        if self.capture.calls == 0 or not module.training or not isinstance(output, Tensor):
            return None
        x = inputs[0].float()  # under autocast the input may be half precision
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims).detach()
        var = x.var(dim=dims, unbiased=False).detach()
        weight = None if module.weight is None else module.weight.float()
        bias = None if module.bias is None else module.bias.float()
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, module.eps).to(output.dtype)
        for name in ("drop", "act"):  # timm's BatchNormAct2d: norm, then dropout, then activation
            extra = getattr(module, name, None)
            if isinstance(extra, nn.Module):
                y = extra(y)
        self.isolated += 1
        return y

    def __enter__(self) -> IsolatedBatchNorm:
        self.isolated = 0
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                self._handles.append(m.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def strip_model_prefix(module, state_dict, prefix, local_metadata) -> None:
    """State-dict post hook: a wrapper's keys without ``model.``, the bare model's."""
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)
    meta = getattr(state_dict, "_metadata", None)
    if meta is not None:
        for key in [k for k in meta if k.startswith(inner) or k == prefix + "model"]:
            meta[prefix + key[len(inner):] if key.startswith(inner) else prefix.rstrip(".")] = meta.pop(key)


def add_model_prefix(module, state_dict, prefix, local_metadata, strict, missing, unexpected,
                     errors) -> None:
    """Load pre hook: a bare model's keys get the wrapper's ``model.`` back."""
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)
