"""A small training run in its own process, for tests/test_checkpoint.py (killed with SIGKILL, resumed).

    python tests/train_worker.py OUT_DIR CHECKPOINT_DIR [--resume]

Prints "batch N" (flushed) each time a batch is drawn, so the test can kill it at a chosen point, and
writes OUT_DIR/final.safetensors and OUT_DIR/history.json when it finishes.
"""
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from saelib import ReLUSAE
from saelib.training.batches import TensorBatches
from saelib.training.loop import TrainConfig, train_sae

TOTAL_STEPS = 60


class LoudBatches(TensorBatches):
    """TensorBatches that announce each batch and take a little time, so a kill lands mid-run."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.n = 0

    def next_batch(self):
        self.n += 1
        print(f"batch {self.n}", flush=True)
        time.sleep(0.01)
        return super().next_batch()


def main():
    out, ckpt = Path(sys.argv[1]), sys.argv[2]
    resume = "--resume" in sys.argv
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(2048, 16, generator=g)
    torch.manual_seed(0)
    sae = ReLUSAE(16, 64)
    with torch.no_grad():
        sae.b_enc[:8] = -100.0                       # dead features, so resampling has work to do
    cfg = TrainConfig(total_steps=TOTAL_STEPS, batch_size=64, lr=3e-3, sparsity_coeff=3e-3, lr_warmup_steps=5,
                      lr_decay_frac=0.2, grad_clip_norm=1.0, resample_every=20, resample_window=10,
                      resample_pool=256, log_every=5, checkpoint_dir=ckpt, checkpoint_every=3, progress=False)
    history = train_sae(sae, LoudBatches(data, cfg.batch_size, seed=cfg.seed), cfg, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, out / "final.safetensors")
    (out / "history.json").write_text(json.dumps(history))
    print("done", flush=True)


if __name__ == "__main__":
    main()
