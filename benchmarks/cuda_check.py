"""Every CUDA path of the pipeline once: train, pseudo-label (+ CRF when pydensecrf is
installed), segment with fp16 and bf16 autocast and resume, predict, evaluate.

    python benchmarks/cuda_check.py      # on a machine with a GPU
"""
import sys, time, warnings, shutil, json
warnings.simplefilter("ignore")
import torch
print("torch", torch.__version__, torch.cuda.get_device_name(0), flush=True)
try:
    import segmentation_models_pytorch  # noqa
    HAVE_SMP = True
except ImportError:
    HAVE_SMP = False
try:
    import pydensecrf.densecrf  # noqa
    HAVE_CRF = True
except ImportError:
    HAVE_CRF = False
print("smp", HAVE_SMP, "crf", HAVE_CRF, flush=True)
from attnguide.data import make_scenes
from attnguide.engine import TrainConfig, train
from attnguide.pipeline import PseudoLabelConfig, pseudo_label, segment, predict, evaluate_predictions
from attnguide.pipeline.segmentation import SegmentConfig, config_from_options
root = make_scenes("/tmp/gs", n_train=64, n_val=16, n_test=4, image_size=64)
train(TrainConfig(data=str(root), model="resnet18", image_size=64, epochs=1, batch_size=16, guidance="none",
                  layer="layer3", device="cuda", quiet=True, out="/tmp/gc"))
for crf in ([False, True] if HAVE_CRF else [False]):
    t = time.perf_counter()
    r = pseudo_label(PseudoLabelConfig(run="/tmp/gc", data=str(root), out=f"/tmp/gp{int(crf)}", crf=crf,
                                       workers=4 if crf else 0, device="cuda", quiet=True))
    print(f"pseudo-label cuda crf={crf}: {r.written} imgs {r.images_per_s:.1f} img/s miou {r.metrics.miou:.3f}",
          "" if not crf else f"crf {r.crf_metrics.miou:.3f}", flush=True)
archs = [("deeplab-largefov", None)] + ([("deeplabv3plus", "resnet18")] if HAVE_SMP else [])
for arch, enc in archs:
    for dtype in ("fp16", "bf16"):
        out = f"/tmp/gs_{arch}_{dtype}"
        res = segment(SegmentConfig(data=str(root), labels="/tmp/gp0", arch=arch, encoder=enc, crop_size=48,
                                    batch_size=8, iterations=3, checkpoint_every=2, amp=True, amp_dtype=dtype,
                                    device="cuda", quiet=True, out=out, crf_eval=HAVE_CRF))
        res = segment(config_from_options({"resume": out, "iterations": 5}))
        h = res.history[-1]
        print(f"segment {arch} amp {dtype}: step {h['step']} loss {h['train_loss']:.3f} val_miou {h['val_miou']:.3f}",
              h.get("val_miou_crf"), flush=True)
        predict(out, f"{out}_pred", data=str(root), split="val", device="cuda", quiet=True)
        m = evaluate_predictions(f"{out}_pred", str(root), "val")
        print("  predict+evaluate", round(m.miou, 4), "==", round(h["val_miou"], 4), flush=True)
print("OK")
