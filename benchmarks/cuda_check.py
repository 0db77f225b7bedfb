"""Every CUDA path of the pipeline once: train, pseudo-label (+ CRF when pydensecrf is
installed), segment with fp16 and bf16 autocast and resume, predict, evaluate.

    python benchmarks/cuda_check.py      # on a machine with a GPU

Last run: 2026-11-24 on the lent H100 (torch 2.11): every step passed; predict +
evaluate reproduced each segmenter's validation mIoU.
"""

from __future__ import annotations

import importlib.util
import time
import warnings

import torch

from attnguide.data import make_scenes
from attnguide.engine import TrainConfig
from attnguide.tasks.evaluate import evaluate_predictions
from attnguide.tasks.prediction import predict
from attnguide.tasks.pseudo_labels import PseudoLabelConfig, pseudo_label
from attnguide.tasks.segmentation import SegmentConfig, config_from_options, segment
from attnguide.tasks.training import train


def main() -> None:
    warnings.simplefilter("ignore")
    print("torch", torch.__version__, torch.cuda.get_device_name(0), flush=True)
    have_smp = importlib.util.find_spec("segmentation_models_pytorch") is not None
    have_crf = importlib.util.find_spec("pydensecrf") is not None
    print("smp", have_smp, "crf", have_crf, flush=True)
    root = make_scenes("/tmp/gs", n_train=64, n_val=16, n_test=4, image_size=64)
    train(TrainConfig(data=str(root), model="resnet18", image_size=64, epochs=1, batch_size=16,
                      guidance="none", layer="layer3", device="cuda", quiet=True, out="/tmp/gc",
                      overwrite=True))
    for crf in [False, True] if have_crf else [False]:
        t0 = time.perf_counter()
        r = pseudo_label(PseudoLabelConfig(run="/tmp/gc", data=str(root), out=f"/tmp/gp{int(crf)}",
                                           crf=crf, workers=4 if crf else 0, device="cuda", quiet=True))
        extra = f" crf {r.crf_metrics.miou:.3f}" if crf else ""
        print(f"pseudo-label cuda crf={crf}: {r.written} images in {time.perf_counter() - t0:.1f} s, "
              f"mIoU {r.metrics.miou:.3f}{extra}", flush=True)
    archs = [("deeplab-largefov", None)] + ([("deeplabv3plus", "resnet18")] if have_smp else [])
    for arch, encoder in archs:
        for dtype in ("fp16", "bf16"):
            out = f"/tmp/gs_{arch}_{dtype}"
            segment(SegmentConfig(data=str(root), labels="/tmp/gp0", arch=arch, encoder=encoder,
                                  crop_size=48, batch_size=8, iterations=3, checkpoint_every=2,
                                  amp=True, amp_dtype=dtype, device="cuda", quiet=True, out=out,
                                  crf_eval=have_crf, overwrite=True))
            res = segment(config_from_options({"resume": out, "iterations": 5}))
            last = res.history[-1]
            print(f"segment {arch} amp {dtype}: step {last['step']} loss {last['train_loss']:.3f} "
                  f"val_miou {last['val_miou']:.3f}", flush=True)
            predict(out, f"{out}_pred", data=str(root), split="val", device="cuda", quiet=True)
            m = evaluate_predictions(f"{out}_pred", str(root), "val")
            print(f"  predict + evaluate: {m.miou:.4f} (training reported {last['val_miou']:.4f})",
                  flush=True)
    print("OK")


if __name__ == "__main__":
    main()
