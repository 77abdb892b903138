"""Peak memory and wall time of one default-scale training run on the embedded model (issue 5's "peak
memory of a default-scale training run below 4 GiB"): caches the activations if needed, trains one SAE
(d_in 128, d_sae 512, batch 1024, 1500 steps), evaluates it (FVU, L0, gamma, spliced LM loss), and prints
the process's RSS high-water mark.

    python benchmarks/default_run_memory.py [--architecture gated] [--coeff 0.1]
"""
import argparse
import resource
import time

from saelib.lab.experiments import LMSite, SAESpec, run
from saelib.lab.scales import get_scale

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--architecture", default="gated", choices=["standard", "gated", "jumprelu", "topk"])
parser.add_argument("--coeff", type=float, default=0.1, help="sparsity coefficient (ignored by topk)")
parser.add_argument("--hook", default="blocks.2.hook_resid_post")
args = parser.parse_args()

site = LMSite("embedded", args.hook, get_scale("default"), progress=False)
start = time.perf_counter()
result = run(site, SAESpec(args.architecture, args.coeff), seed=12345, force=True)
seconds = time.perf_counter() - start
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{args.architecture}: trained + evaluated in {seconds:.1f} s; L0 {result.metrics['l0']:.1f}, "
      f"FVU {result.metrics['fvu']:.3f}, delta LM loss {result.metrics['delta_lm_loss']:.4f}")
print(f"peak RSS of the whole process (torch, model, activation cache, SAE, Adam): {peak_mib:.0f} MiB")
