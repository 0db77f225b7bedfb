"""Run by tests/integrations/test_lightning.py under torchrun: GuidedModule with
strategy="ddp" on CPU (gloo); rank 0 saves the bare model's state dict to argv[2]."""

import json
import sys

import lightning as L
import torch

from attnguide.integrations.lightning import GuidedModule

options = json.loads(sys.argv[1])
module = GuidedModule(options)
trainer = L.Trainer(max_epochs=module.cfg.epochs, accelerator="cpu", devices=2, strategy="ddp",
                    use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                    precision=sys.argv[3] if len(sys.argv) > 3 else "32-true")
trainer.fit(module)
if trainer.global_rank == 0:
    torch.save({"model": module.model.state_dict(), "steps": trainer.global_step}, sys.argv[2])
