"""Data-parallel training under torchrun, for tests/test_distributed.py.

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT_DIR

For each case in CASES, trains the same SAE on the same data as a single process would (global batch
64, split 32 + 32 across the ranks); rank 0 writes OUT_DIR/<case>.safetensors and <case>.json. A last
run with resampling checks that every rank ends with the same weights (OUT_DIR/ranks.json); last, each
rank's ActivationBuffer reports its shard and scale (OUT_DIR/buffer.json).
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from saelib import GatedSAE, JumpReLUSAE, ReLUSAE
from saelib.training.distributed import destroy_distributed, init_distributed
from saelib.training.loop import TrainConfig, train_sae

D_IN, D_SAE = 16, 48
CASES = {
    # unit-norm decoder: the gradient projection and renormalisation hooks must act on the inner module
    "relu": (lambda: ReLUSAE(D_IN, D_SAE, resample=False), dict(grad_clip_norm=1.0, lr_warmup_steps=5)),
    "april": (lambda: ReLUSAE(D_IN, D_SAE, variant="april_update"),
              dict(grad_clip_norm=1.0, lr_decay_frac=0.2, sparsity_warmup_frac=0.05, adam_betas=(0.9, 0.999))),
    "gated": (lambda: GatedSAE(D_IN, D_SAE, resample=False), dict(lr_warmup_steps=5)),
    "jumprelu": (lambda: JumpReLUSAE(D_IN, D_SAE, bandwidth=0.05, theta_init=0.05), dict()),
    # about 3% of pre-activations above theta - eps: the sparse step (saelib/fast/) on every rank
    "jumprelu_sparse": (lambda: JumpReLUSAE(D_IN, D_SAE, bandwidth=0.1, theta_init=2.0), dict()),
}


def data():
    return torch.randn(2048, D_IN, generator=torch.Generator().manual_seed(0))


def make(case):
    torch.manual_seed(0)
    return CASES[case][0]()


def config(case, **kw):
    base = dict(total_steps=30, batch_size=64, lr=3e-3, sparsity_coeff=3e-3, log_every=10, progress=False,
                device="cpu")
    return TrainConfig(**{**base, **CASES[case][1], **kw})


def main():
    out = Path(sys.argv[1])
    info = init_distributed()
    assert info.world_size == 2, info
    torch.set_num_threads(1)
    for case in CASES:
        sae = make(case)
        kw = {"checkpoint_dir": str(out / "ckpt"), "checkpoint_every": 10} if case == "relu" else {}
        history = train_sae(sae, data(), config(case, **kw))
        if info.is_main:
            save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, out / f"{case}.safetensors")
            (out / f"{case}.json").write_text(json.dumps(history))

    # resampling under DDP: every rank must apply the same new directions
    sae = make("relu")
    with torch.no_grad():
        sae.b_enc[:10] = -100.0
    history = train_sae(sae, data(), config("relu", resample=True, resample_every=10, resample_window=5,
                                            resample_pool=256))
    flat = torch.cat([p.detach().flatten() for p in sae.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(info.world_size)]
    dist.all_gather(gathered, flat)
    if info.is_main:
        (out / "ranks.json").write_text(json.dumps({
            "max_diff_between_ranks": max((g - gathered[0]).abs().max().item() for g in gathered),
            "n_resampled": sum(h["n_resampled"] for h in history)}))

    # the model-driven activation buffer: each rank its own sequences and half the batch, one shared scale
    from saelib.data.activations import ActivationBuffer, BufferConfig
    from saelib.data.normalization import estimate_scale
    from saelib.data.registry import load_model, load_text_dataset, model_tokenize
    from saelib.training.distributed import all_gather_objects

    lm = load_model("embedded")
    rows = model_tokenize(lm, load_text_dataset("embedded", "heldout", n_docs=40), lm.cfg.n_ctx)
    buffer = ActivationBuffer(lm, rows, BufferConfig("blocks.2.hook_resid_post", batch_size=64, buffer_size=256,
                                                     progress=False))
    batch = buffer.next_batch()
    mine = {"rank": buffer.rank, "world_size": buffer.world_size, "rows": batch.shape[0], "scale": buffer.scale,
            "own_estimate": estimate_scale(buffer.storage, "unit_mean_squared_norm"),
            "first_token_row": buffer.tokens[0].tolist()}
    everyone = all_gather_objects(mine)
    if info.is_main:
        (out / "buffer.json").write_text(json.dumps(everyone))
    destroy_distributed()


if __name__ == "__main__":
    main()
