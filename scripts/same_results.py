"""Same seed, same numbers: train one small SAE of every family with the public API and print a digest of
its final weights and its held-out metrics, so that two checkouts can be compared (a restructure or a
speed-up must not change a result).

    python scripts/same_results.py > new.txt
    git worktree add /tmp/old <commit> && PYTHONPATH=/tmp/old python scripts/same_results.py > old.txt
    diff old.txt new.txt                                 # empty: bitwise identical weights and metrics

Uses only paths that every version since the first release exports (saelib.create_sae, saelib.train,
saelib.synthetic, saelib.metrics.evaluate_sae), on synthetic activations, one thread.
"""
from __future__ import annotations

import hashlib

import torch

from saelib import create_sae
from saelib.metrics import evaluate_sae
from saelib.synthetic import SyntheticActivations
from saelib.train import TrainConfig, train_sae

ARMS = [  # (architecture, constructor options, sparsity coefficient, TrainConfig overrides)
    ("standard", {}, 0.3, {"resample_every": 100}),
    ("standard", {"variant": "april_update"}, 0.3, {"grad_clip_norm": 1.0, "lr_decay_frac": 0.2,
                                                    "sparsity_warmup_frac": 0.05}),
    ("gated", {}, 0.3, {"resample_every": 100}),
    ("jumprelu", {"theta_init": 0.1, "bandwidth": 0.01}, 0.01, {"lr_warmup_steps": 20}),
    ("topk", {"k": 8}, 0.0, {}),
]


def main() -> None:
    torch.set_num_threads(1)
    data = SyntheticActivations(seed=0)
    train = data.sample(65_536, seed=1)                                  # [tokens, d_in]
    held_out = data.sample(8_192, seed=2)
    for architecture, options, coeff, overrides in ARMS:
        torch.manual_seed(0)
        sae = create_sae(architecture, data.d_in, 4 * data.d_in, **options)
        cfg = TrainConfig(total_steps=300, batch_size=512, lr=1e-3, sparsity_coeff=coeff, seed=0,
                          progress=False, log_every=100, device="cpu", **overrides)
        train_sae(sae, train, cfg)
        digest = hashlib.sha256()
        for name, tensor in sorted(sae.state_dict().items()):
            if name == "bandwidths":          # a buffer whose dtype changed (float64 since the exact-eps fix)
                tensor = tensor.float()
            digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
        metrics = evaluate_sae(sae, held_out)
        scalars = {k: float(v) for k, v in metrics.items() if not isinstance(v, torch.Tensor) or v.numel() == 1}
        shown = ", ".join(f"{k} {scalars[k]:.10g}" for k in sorted(scalars))
        print(f"{architecture} {options}: weights {digest.hexdigest()[:16]}; {shown}")


if __name__ == "__main__":
    main()
