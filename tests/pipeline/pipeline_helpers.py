"""Helpers shared by the pipeline tests."""

from __future__ import annotations

import pytest
import torch


def fit_until_first_save(trainer) -> None:
    """Run ``trainer.fit()`` and kill it right after its first checkpoint is written,
    as a SIGKILL between two iterations would."""
    save = trainer.save

    def save_then_die(*names):
        save(*names)
        raise KeyboardInterrupt

    trainer.save = save_then_die
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def same_weights(checkpoint_a, checkpoint_b) -> bool:
    """Whether two checkpoints hold bit-identical model weights (same keys)."""
    a = torch.load(checkpoint_a, weights_only=True)["model"]
    b = torch.load(checkpoint_b, weights_only=True)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
