"""Throughput of the activation pipeline: embedded model -> hook -> shuffled ActivationBuffer -> batches.

    python benchmarks/activations.py                               # blocks.1.hook_resid_post, defaults
    python benchmarks/activations.py --hook blocks.0.mlp.hook_post --repeats 7

Two phases, alternated every repeat so that load from other processes hits both alike:
  forward         the model's forward pass up to the hook (it stops there) over the sequences that the
                  buffer phase consumes, BOS / padding positions dropped (saelib.data.activations.kept_activations)
  forward+buffer  ActivationBuffer.next_batch() in the steady state: every served activation is replaced
                  by a fresh one, so serving N activations runs the forward pass for N activations and
                  adds the buffer's work (copy into storage, re-permutation, gathering and scaling batches)
The buffer's share is 1 - (forward time per activation) / (forward+buffer time per activation), per
repeat; and, less exposed to load from other processes, the share of the buffer phase spent outside the
model's forward (timed inside the phase). Medians are reported.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))          # run from a checkout without install


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--batch-size", type=int, default=4096, help="SAE batch (activations per next_batch)")
    p.add_argument("--buffer-size", type=int, default=2 ** 16)
    p.add_argument("--model-batch-size", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--refills", type=int, default=2, help="buffer refills per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    import saelib.data.activations as saelib_activations
    from saelib.data.activations import ActivationBuffer, BufferConfig, default_exclude_token_ids, kept_activations
    from saelib.data.registry import load_model, load_text_dataset, model_tokenize

    model = load_model("embedded", device=a.device)
    tokens = model_tokenize(model, load_text_dataset("embedded", "train", n_docs=20_000), model.cfg.n_ctx)
    exclude = default_exclude_token_ids(model)
    cfg = BufferConfig(hook_name=a.hook, batch_size=a.batch_size, buffer_size=a.buffer_size,
                       model_batch_size=a.model_batch_size, progress=False, device=a.device)
    buffer = ActivationBuffer(model, tokens, cfg)
    per_refill = int(cfg.refill_fraction * buffer.capacity) // a.batch_size       # batches between refills
    if per_refill < 1:
        raise ValueError("buffer too small for this batch size: it refills before every batch")
    n_batches = per_refill * a.refills
    for _ in range(per_refill):              # first (full) fill and serving up to the next refill
        buffer.next_batch()

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    # time spent inside the model's forward during the buffer phase, measured directly
    inside = [0.0]

    def timed_kept_activations(*args, **kwargs):
        sync()
        t0 = time.perf_counter()
        out = kept_activations(*args, **kwargs)
        sync()
        inside[0] += time.perf_counter() - t0
        return out

    saelib_activations.kept_activations = timed_kept_activations

    def buffer_phase():
        start_seq = buffer.epoch * len(tokens) + buffer.next_seq
        inside[0] = 0.0
        sync()
        t0 = time.perf_counter()
        for _ in range(n_batches):
            buffer.next_batch()
        sync()
        seconds = time.perf_counter() - t0
        return seconds, start_seq, buffer.epoch * len(tokens) + buffer.next_seq, inside[0]

    def forward_phase(start_seq, stop_seq):
        n = 0
        sync()
        t0 = time.perf_counter()
        for s in range(start_seq, stop_seq, a.model_batch_size):
            rows = torch.arange(s, min(s + a.model_batch_size, stop_seq)) % len(tokens)
            n += len(kept_activations(model, tokens[rows], a.hook, exclude))
        sync()
        return time.perf_counter() - t0, n

    served = n_batches * a.batch_size
    results = []
    _, start, stop, _ = buffer_phase()                # warm-up; the sequence range the phases cover
    for r in range(a.repeats):                        # alternate which phase goes first
        if r % 2:
            t_fwd, n_fwd = forward_phase(start, stop)
            t_buf, start, stop, t_in = buffer_phase()
        else:
            t_buf, start, stop, t_in = buffer_phase()
            t_fwd, n_fwd = forward_phase(start, stop)
        results.append((t_fwd, t_buf, n_fwd, t_in))
    t_fwd = statistics.median(r[0] for r in results)
    t_buf = statistics.median(r[1] for r in results)
    n_fwd = statistics.median(r[2] for r in results)
    # per activation: the forward phase may cover a few more or fewer activations than were served
    share = statistics.median(1 - (r[0] / r[2]) / (r[1] / served) for r in results)
    print(f"embedded model ({model.cfg.n_layers} layers, d_model {model.cfg.d_model}), hook {a.hook} "
          f"(d_in {buffer.d_in}), device {a.device}, threads {a.threads}")
    print(f"buffer {buffer.capacity} activations, SAE batch {a.batch_size}, {a.model_batch_size} sequences "
          f"x {tokens.shape[1]} tokens per forward pass; {a.repeats} repeats of {served} activations (medians)")
    print(f"forward alone      {n_fwd / t_fwd:10.0f} activations/s   {t_fwd * 1e3:8.1f} ms")
    print(f"forward + buffer   {served / t_buf:10.0f} activations/s   {t_buf * 1e3:8.1f} ms")
    print(f"buffer's share of the pipeline time: {100 * share:.1f}%  "
          f"(it adds {100 * share / (1 - share):.1f}% to the forward time; paired phases)")
    direct = statistics.median(1 - r[3] / r[1] for r in results)
    print(f"buffer's share measured inside the buffer phase (time outside the model's forward): "
          f"{100 * direct:.1f}%  (adds {100 * direct / (1 - direct):.1f}% to the forward time)")


if __name__ == "__main__":
    main()
