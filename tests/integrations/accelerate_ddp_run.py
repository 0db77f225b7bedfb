"""Run by tests/integrations/test_accelerate.py under torchrun: attnguide.integrations.accelerate.fit
in 2 CPU processes (gloo); the main process saves the bare model's state dict to argv[2]."""

import json
import sys

import torch

from attnguide.integrations.accelerate import fit

result = fit(json.loads(sys.argv[1]))
if result.accelerator.is_main_process:
    torch.save({"model": result.model.state_dict(), "steps": result.step,
                "processes": result.accelerator.num_processes}, sys.argv[2])
