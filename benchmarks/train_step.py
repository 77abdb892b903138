"""Training-step throughput of saelib's SAEs, optionally side by side with SAELens and dictionary_learning.

    python benchmarks/train_step.py                                   # the four architectures, ours only
    .venv-bench/bin/python benchmarks/train_step.py --vs saelens dictionary_learning
    python benchmarks/train_step.py --arch topk --k 16 32 64 128      # sparse TopK against the dense floor
    .venv-bench/bin/python benchmarks/train_step.py --vs saelens dictionary_learning --l0 64   # trained-like

Two states. By default every SAE is at its random initialisation, where about half the latents fire:
the dense worst case. With --l0 N every implementation's biases or thresholds are first moved so that
each latent fires on N / d_sae of the batch (about N per token), the sparsity of a trained SAE, where
saelib takes its sparse step (saelib/fast). The L0 each implementation has after the timed steps is
printed; the peers' own steps run densely whatever their L0.

One step is what saelib.training.loop.train_sae does per batch: forward, the loss function train_sae
chooses once (saelib.fast.training_loss(sae, device): the sparse step on a CPU when sparse enough,
--max-density sets its threshold), backward, the SAE's
before_optimizer_step hook, Adam step, after_optimizer_step hook, zero_grad. The peers run their own
full steps: SAELens's SAETrainer.step (its bookkeeping and gradient clipping included) and
dictionary_learning's trainer.update.

How it measures. Each implementation (and the reference matmul, a [B, d_in] @ [d_in, d_sae] product)
lives in its own worker process, so its peak memory (RSS high-water mark, or CUDA max allocated) is its
own. After warm-up the parent asks the workers for one step each, in an order that rotates every repeat,
so that load from other processes on a shared machine hits everyone alike; ratios are medians of the
per-repeat (paired) ratios. Throughput is counted in the FLOPs a step must do, the same count for every
implementation of an architecture (matrix products only; 2 FLOPs per multiply-add):
    standard, jumprelu  10 B d_in d_sae  encoder forward, decoder forward, decoder input and weight
                                         gradients, encoder weight gradient (the gradient with respect to
                                         the input x is never needed)
    gated               14 B d_in d_sae  the same plus the auxiliary reconstruction through the frozen
                                         decoder (forward and input gradient); the magnitude path shares
                                         the gate's encoder product
    topk                2 B d_in d_sae + 8 B k d_in   dense encoder forward (to choose the top k); the
                                         decoder and the encoder gradient touch only B k latents.
                                         Its "dense floor" is 10 B d_in d_sae at the matmul rate.
The count stays the dense one under --l0: a sparse step that does fewer FLOPs shows "of matmul" > 1.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))          # run from a checkout without install

ARCHS = ("standard", "gated", "jumprelu", "topk")
PEERS = ("saelens", "dictionary_learning")


# ----------------------------------------------------------------------------- FLOP counts

def step_flops(arch: str, batch: int, d_in: int, d_sae: int, k: int) -> float:
    """FLOPs a training step must do (see the module docstring)."""
    bmn = batch * d_in * d_sae
    if arch in ("standard", "jumprelu"):
        return 10.0 * bmn
    if arch == "gated":
        return 14.0 * bmn
    return 2.0 * bmn + 8.0 * batch * k * d_in


def matmul_flops(batch: int, d_in: int, d_sae: int) -> float:
    return 2.0 * batch * d_in * d_sae


# ----------------------------------------------------------------------------- steps to time

def make_ours(arch, a, device, x, adam="train_sae"):
    """saelib's step, as in train_sae's hot loop (Adam as train_sae builds it: fused on CUDA, foreach on
    CPU; adam="fused" forces torch's fused Adam, "ours+fused" in the table)."""
    from saelib import create_sae
    from saelib.fast import SPARSE_MAX_DENSITY, training_loss

    options = {"k": a.k, "aux_k": a.d_in // 2} if arch == "topk" else {}
    sae = create_sae(arch, a.d_in, a.d_sae, **options).to(device).train()
    max_density = getattr(a, "max_density", None)
    loss_fn = training_loss(sae, device, max_density=SPARSE_MAX_DENSITY if max_density is None else max_density)
    params = [p for p in sae.parameters() if p.requires_grad]
    fused = device.type == "cuda" if adam == "train_sae" else adam == "fused"
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.0, 0.999), fused=fused)
    lam = 1.0 if arch == "jumprelu" else 1e-2

    def step():
        out = loss_fn(x, lam)
        out.loss.backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()
        opt.zero_grad(set_to_none=True)
    step.loss_fn = loss_fn                  # (shown by profile_step.py)
    return step, sae


def make_saelens(arch, a, device, x):
    """SAELens's own full step: SAETrainer.step (forward, firing bookkeeping, backward, clip, Adam)."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    common = {"d_in": a.d_in, "d_sae": a.d_sae, "device": str(device)}
    sae = {
        "standard": lambda: StandardTrainingSAE(StandardTrainingSAEConfig(**common, l1_coefficient=1e-2)),
        "gated": lambda: GatedTrainingSAE(GatedTrainingSAEConfig(**common, l1_coefficient=1e-2)),
        "jumprelu": lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            **common, l0_coefficient=1.0, jumprelu_bandwidth=1e-3, jumprelu_init_threshold=1e-3)),
        "topk": lambda: TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=a.k)),
    }[arch]()
    cfg = SAETrainerConfig(total_training_samples=10**12, train_batch_size_samples=a.batch, lr=1e-4,
                           lr_end=1e-5, adam_beta1=0.0, device=str(device),
                           autocast=a.precision == "bf16")
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))

    def step():
        trainer.step(x)
        trainer.n_training_steps += 1
    return step, sae


def make_dictionary_learning(arch, a, device, x):
    """dictionary_learning's own full step: trainer.update(step, x), in the steady state (past warm-ups)."""
    from dictionary_learning.trainers import GatedSAETrainer, JumpReluTrainer, StandardTrainer, TopKTrainer

    common = {"steps": 10**7, "activation_dim": a.d_in, "dict_size": a.d_sae, "layer": 0,
              "lm_name": "benchmark", "device": str(device), "warmup_steps": 10}
    trainer = {
        "standard": lambda: StandardTrainer(**common, l1_penalty=1e-2, sparsity_warmup_steps=10),
        "gated": lambda: GatedSAETrainer(**common, l1_penalty=1e-2, sparsity_warmup_steps=10),
        "jumprelu": lambda: JumpReluTrainer(**common, sparsity_warmup_steps=10),
        "topk": lambda: TopKTrainer(**common, k=a.k),
    }[arch]()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")
    counter = iter(range(10_000, 10**9))     # step 0 would re-initialise b_dec (TopK); > 1000 = steady state

    def step():
        with autocast:
            trainer.update(next(counter), x)
    return step, trainer.ae


def make_matmul(arch, a, device, x):
    """The reference: [batch, d_in] @ [d_in, d_sae] in fp32 (bf16 under --precision bf16 on CUDA)."""
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    g = torch.Generator().manual_seed(1)
    lhs = torch.randn(a.batch, a.d_in, generator=g).to(device, dtype)
    rhs = torch.randn(a.d_in, a.d_sae, generator=g).to(device, dtype)

    def step():
        lhs @ rhs
    return step, None


# ----------------------------------------------------------------------------- a trained-like sparsity

def firing_handles(impl, arch, model):
    """(pre(x): the pre-activations that decide firing [batch, d_sae], cut(): the firing threshold,
    shift(q): move the bias or threshold so that pi > cut becomes pi > q) for each implementation."""
    def P(name):
        return getattr(model, name)
    if arch == "topk" or model is None:
        return None
    if impl.startswith("ours"):
        if arch == "gated":
            return (lambda x: model.pre_activations(x)[0], lambda: 0.0, lambda q: P("b_gate").sub_(q))
        if arch == "jumprelu":
            return (model.pre_activations, lambda: model.threshold,
                    lambda q: P("log_threshold").copy_(q.clamp_min(1e-4).log()))
        return (model.pre_activations, lambda: 0.0, lambda q: P("b_enc").sub_(q))
    if impl == "saelens":                   # b_dec is zero at init and not subtracted elsewhere
        bias = "b_gate" if arch == "gated" else "b_enc"
        def pre(x):
            return (x - model.b_dec) @ model.W_enc + P(bias)
        if arch == "jumprelu":
            return pre, lambda: model.threshold, lambda q: P("threshold").copy_(q.clamp_min(1e-4))
        return pre, lambda: 0.0, lambda q: P(bias).sub_(q)
    if arch == "jumprelu":                  # dictionary_learning
        return (lambda x: x @ model.W_enc + model.b_enc, lambda: model.threshold,
                lambda q: P("threshold").copy_(q.clamp_min(1e-4)))
    if arch == "gated":
        return (lambda x: model.encoder(x - model.decoder_bias) + model.gate_bias, lambda: 0.0,
                lambda q: P("gate_bias").sub_(q))
    return (lambda x: model.encoder(x - model.bias), lambda: 0.0, lambda q: model.encoder.bias.sub_(q))


@torch.no_grad()
def set_l0(handles, x, l0: float) -> None:
    """Each latent fires on l0 / d_sae of the batch: its threshold moves to that quantile of its
    pre-activations (a trained SAE's sparsity, from a random initialisation)."""
    pre, _, shift = handles
    pi = pre(x)                                                     # [batch, d_sae]
    batch, d_sae = pi.shape
    keep = min(batch - 1, max(1, round(batch * l0 / d_sae)))
    shift(pi.kthvalue(batch - keep, dim=0).values)


@torch.no_grad()
def measured_l0(handles, x) -> float:
    pre, cut, _ = handles
    return float((pre(x) > cut()).sum(-1).float().mean())


def make_ours_fused(arch, a, device, x):
    return make_ours(arch, a, device, x, adam="fused")


MAKERS = {"ours": make_ours, "ours+fused": make_ours_fused,
          "saelens": make_saelens, "dictionary_learning": make_dictionary_learning, "matmul": make_matmul}


def peer_available(name: str) -> bool:
    try:
        __import__({"saelens": "sae_lens", "dictionary_learning": "dictionary_learning"}[name])
        return True
    except Exception:
        return False


# ----------------------------------------------------------------------------- worker process

def _peak_bytes(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024        # Linux reports KiB


def worker(conn, impl, arch, a):
    """Build one implementation, then serve ("step", n) -> [seconds per step] and ("memory",)."""
    try:
        torch.set_num_threads(a.threads)
        device = torch.device(a.device)
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(a.batch, a.d_in, generator=g) / a.d_in ** 0.5).to(device)   # E||x||^2 = 1
        base = _peak_bytes(device)
        step, model = MAKERS[impl](arch, a, device, x)
        handles = firing_handles(impl, arch, model)
        if a.l0 is not None and handles is not None:
            set_l0(handles, x, a.l0)
        conn.send(("ready", None))
        while True:
            cmd, n = conn.recv()
            if cmd == "stop":
                return
            if cmd == "memory":
                conn.send(("memory", (base, _peak_bytes(device))))
                continue
            if cmd == "l0":
                conn.send(("l0", None if handles is None else measured_l0(handles, x)))
                continue
            times = []
            for _ in range(n):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
            conn.send(("times", times))
    except Exception:
        conn.send(("error", traceback.format_exc()))


class Worker:
    def __init__(self, ctx, impl, arch, a):
        self.impl = impl
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker, args=(child, impl, arch, a), daemon=True)
        self.proc.start()
        self._expect("ready")

    def _expect(self, kind):
        got, payload = self.conn.recv()
        if got == "error":
            raise RuntimeError(f"worker {self.impl} failed:\n{payload}")
        assert got == kind, (got, kind)
        return payload

    def steps(self, n):
        self.conn.send(("step", n))
        return self._expect("times")

    def memory(self):
        self.conn.send(("memory", None))
        return self._expect("memory")

    def l0(self):
        self.conn.send(("l0", None))
        return self._expect("l0")

    def stop(self):
        self.conn.send(("stop", None))
        self.proc.join(timeout=30)


# ----------------------------------------------------------------------------- the comparison

def run_arch(arch, a, impls, ctx) -> list[dict]:
    workers = {}
    try:
        for impl in ("matmul", *impls):
            workers[impl] = Worker(ctx, impl, arch, a)
        for w in workers.values():                             # warm-up (Adam state, allocator, caches)
            w.steps(a.warmup)
        order = list(workers)
        times: dict[str, list[float]] = {impl: [] for impl in workers}
        for r in range(a.repeats):
            rotated = order[r % len(order):] + order[:r % len(order)]
            for impl in rotated:
                times[impl].extend(workers[impl].steps(1))
        memory = {impl: w.memory() for impl, w in workers.items()}
        l0s = {impl: w.l0() for impl, w in workers.items()}
    finally:
        for w in workers.values():
            w.stop()

    flops = step_flops(arch, a.batch, a.d_in, a.d_sae, a.k)
    mm = [matmul_flops(a.batch, a.d_in, a.d_sae) / t for t in times["matmul"]]     # FLOP/s per repeat
    rows = []
    for impl in impls:
        t = times[impl]
        row = {"arch": arch, "impl": impl, "k": a.k if arch == "topk" else None,
               "ms": 1e3 * statistics.median(t), "tokens_s": a.batch / statistics.median(t),
               "gflops": flops / statistics.median(t) / 1e9,
               "of_matmul": statistics.median(flops / ti / m for ti, m in zip(t, mm, strict=True)),
               "matmul_gflops": statistics.median(mm) / 1e9,
               "peak_mb": memory[impl][1] / 2**20, "step_mb": (memory[impl][1] - memory[impl][0]) / 2**20,
               "l0_after": l0s[impl]}
        if arch == "topk":           # > 1: faster than a dense step could ever be at the matmul rate
            dense = step_flops("standard", a.batch, a.d_in, a.d_sae, a.k)
            row["vs_dense_floor"] = statistics.median(dense / m / ti for ti, m in zip(t, mm, strict=True))
        if impl in PEERS:            # paired: ours is this many times faster than the peer
            row["ours_speedup"] = statistics.median(tp / to for tp, to in zip(t, times["ours"], strict=True))
        rows.append(row)
    return rows


def print_rows(rows, a):
    mem = "CUDA max allocated" if a.device.startswith("cuda") else "RSS high-water"
    state = "random init" if a.l0 is None else f"thresholds set for L0 {a.l0:g}"
    print(f"\nd_in={a.d_in} d_sae={a.d_sae} batch={a.batch} device={a.device} precision={a.precision} "
          f"threads={a.threads} repeats={a.repeats} state={state} (medians; peak memory = {mem}; L0 "
          "measured after the timed steps)")
    head = (f"{'arch':9s} {'impl':20s} {'tokens/s':>9s} {'ms/step':>8s} {'GFLOP/s':>8s} {'of matmul':>9s} "
            f"{'peak MiB':>9s} {'step MiB':>9s}  notes")
    print(head)
    print("-" * len(head))
    for r in rows:
        notes = []
        if r["k"] is not None:
            notes.append(f"k={r['k']}, {r['vs_dense_floor']:.2f}x the dense floor")
        if r["l0_after"] is not None:
            notes.append(f"L0 {r['l0_after']:.0f}")
        if "ours_speedup" in r:
            notes.append(f"ours is {r['ours_speedup']:.2f}x faster")
        print(f"{r['arch']:9s} {r['impl']:20s} {r['tokens_s']:9.0f} {r['ms']:8.1f} {r['gflops']:8.1f} "
              f"{r['of_matmul']:9.2f} {r['peak_mb']:9.0f} {r['step_mb']:9.0f}  {'; '.join(notes)}")
    mms = sorted({round(r["matmul_gflops"], 1) for r in rows})
    print(f"reference matmul {a.batch}x{a.d_in} @ {a.d_in}x{a.d_sae}: median {', '.join(map(str, mms))} GFLOP/s "
          "(per architecture run)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, nargs="+", default=[32], help="TopK k (several: one row each)")
    p.add_argument("--l0", type=float, default=None,
                   help="set every implementation's biases/thresholds so that about this many latents fire "
                        "per token (a trained SAE's state); default: the random initialisation (about half "
                        "fire: the dense worst case). Not used for TopK (k sets it)")
    p.add_argument("--max-density", type=float, default=None,
                   help="saelib's sparse-step threshold (saelib.fast.training_loss's max_density, default "
                        "SPARSE_MAX_DENSITY; 0 = always dense, 1 = sparse whenever possible)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every worker")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    p.add_argument("--precision", nargs="+", default=None, choices=("fp32", "bf16"),
                   help="default: fp32 on CPU; fp32 and bf16 autocast on CUDA")
    p.add_argument("--fused-adam", action="store_true",
                   help="also time our step with torch's fused Adam (row ours+fused); train_sae uses it on CUDA only")
    p.add_argument("--vs", nargs="*", default=[], choices=PEERS + ("dl",),
                   help="also time these libraries' own training steps (installed in this interpreter)")
    a = p.parse_args(argv)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.precision is None:
        a.precision = ["fp32", "bf16"] if a.device.startswith("cuda") else ["fp32"]
    a.vs = ["dictionary_learning" if v == "dl" else v for v in a.vs]
    return a


def main(argv=None):
    a = parse_args(argv)
    peers = []
    for name in a.vs:
        if peer_available(name):
            peers.append(name)
        else:
            print(f"note: {name} is not installed in this interpreter ({sys.executable}); skipped "
                  "(pip install 'saelib[bench]' in a separate virtualenv, see benchmarks/README.md)")
    ctx = mp.get_context("spawn")
    all_rows = []
    for precision in a.precision:
        rows = []
        for arch in a.arch:
            for k in (a.k if arch == "topk" else a.k[:1]):
                args = argparse.Namespace(**{**vars(a), "precision": precision, "k": k})
                ours = ["ours", "ours+fused"] if a.fused_adam else ["ours"]
                rows.extend(run_arch(arch, args, [*ours, *peers], ctx))
        print_rows(rows, argparse.Namespace(**{**vars(a), "precision": precision}))
        all_rows.extend(rows)
    return all_rows


if __name__ == "__main__":
    main()
