"""The scales every notebook takes (docs/design.md §4).

smoke    CI: seconds per notebook on 2 CPU cores; tiny SAEs, a couple of sweep points.
default  the embedded reproduction: the whole of run_all.sh in well under an hour on 2 CPU cores.
paper    GPU, the papers' models and token budgets (batch 4096, 16x-32x expansion, ~10^8+ tokens).
long     CPU, optional (hours): the default site and SAEs with 4x the training steps (and 4x the distinct
         training tokens), to see whether a default-scale verdict changes when the frontiers have moved further.

The CPU scales that make claims (default, long) cache at least as many distinct training activations as one SAE
trains on at the 1x budget (train_tokens >= batch_size * train_steps), so a 1x run sees each activation at most
once and a longer budget (Protocol.budget) measures longer training, not only repetition of a small sample
(smoke only shows that the notebooks run; paper reads a hub model, where a streaming buffer is the usual choice).

Every compared point of a claim is trained at `n_seeds` seeds (3 at default; 2 at smoke, which only shows
that the notebooks run).

Two grids of sparsity coefficients per family (saelib.lab.experiments.frontier_specs, log-spaced over the same range):
  sweep_points     the operating grid: where single-lambda experiments sit (an ablation arm at "the two central
                   points", the LR sweep's operating point), so that they stay put when the frontier gets denser;
  frontier_points  the reference frontiers every equal-L0 comparison reads (saelib.lab.pareto interpolates between
                   neighbouring points), at least sweep_points. k x (sweep_points - 1) + 1 points contain the
                   operating grid (7 or 10 contain 4), so the operating points are frontier points too (one run each).
At `default` and `long` the frontiers have 7 points: with 4, the log-log interpolation between neighbours misses a
measured interior point by more than the seed spread (notebook 08's leave-one-out check), and one equal-L0 verdict
(JumpReLU vs Gated) changes between 4 and 7 points, at both budgets (notebook 08 §3 reports it). With 7 points the
whole default run measured 41.2 and 41.4 minutes from an empty run cache, within its 45-minute target
(benchmarks/README.md); `n_points = 4` in a notebook's parameters (or get_scale("default", frontier_points=4)) is
the quicker look.

A notebook reads its budget from `get_scale(scale)` and may override any field in its parameters cell.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from saelib.lab.paths import SCALES
from saelib.validation import check_choice, check_positive


@dataclass(frozen=True)
class Scale:
    name: str
    train_tokens: int        # activations cached once per site and reused by every SAE of the sweep
    eval_tokens: int         # held-out tokens for FVU, L0, gamma and the spliced LM loss
    batch_size: int          # SAE training batch (tokens)
    train_steps: int         # SAE training steps
    expansion: int           # d_sae = expansion * d_in
    sweep_points: int        # the operating grid: sparsity coefficients where single-lambda experiments sit
    probe_examples: int      # labelled examples in the sentiment-probe slice
    n_seeds: int = 3         # training seeds per compared point of a claim (saelib.lab.protocol.check_seeds)
    frontier_points: int | None = None   # points of every reference frontier; None: sweep_points

    def __post_init__(self):
        check_choice("name", self.name, SCALES)
        if self.frontier_points is None:
            object.__setattr__(self, "frontier_points", self.sweep_points)
        for field in ("train_tokens", "eval_tokens", "batch_size", "train_steps", "expansion",
                      "sweep_points", "probe_examples", "n_seeds", "frontier_points"):
            check_positive(field, getattr(self, field), integer=True)
        if self.frontier_points < self.sweep_points:
            raise ValueError(f"frontier_points={self.frontier_points} is not allowed with sweep_points="
                             f"{self.sweep_points}: a reference frontier has at least the operating grid's points")

    @property
    def frontier_nests_grid(self) -> bool:
        """Whether the frontier's coefficients contain the operating grid's:
        frontier_points = k (sweep_points - 1) + 1."""
        points = self.frontier_points or self.sweep_points          # set in __post_init__
        if self.sweep_points == 1:
            return points % 2 == 1
        return (points - 1) % (self.sweep_points - 1) == 0

    @property
    def train_token_budget(self) -> int:
        return self.batch_size * self.train_steps

    def with_(self, **changes) -> Scale:
        """A copy with some fields replaced (None values are ignored), e.g. from a parameters cell. Given alone, a
        sweep_points moves a frontier that is the operating grid (frontier_points == sweep_points) with it, and a
        frontier_points below the operating grid's takes the grid down with it (e.g. n_points = 2 for a quick look)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "sweep_points" in changes and "frontier_points" not in changes and self.frontier_points == self.sweep_points:
            changes["frontier_points"] = changes["sweep_points"]
        if "frontier_points" in changes and "sweep_points" not in changes and \
                isinstance(changes["frontier_points"], int) and 0 < changes["frontier_points"] < self.sweep_points:
            changes["sweep_points"] = changes["frontier_points"]
        return replace(self, **changes)


PRESETS = {
    "smoke": Scale("smoke", train_tokens=16_384, eval_tokens=2_048, batch_size=256, train_steps=120,
                   expansion=2, sweep_points=2, probe_examples=300, n_seeds=2),
    # 7 points per reference frontier x 3 seeds (log-log interpolation between them, saelib.lab.pareto), containing
    # the 4-point operating grid; run_all.sh measured 41.2 and 41.4 minutes with them
    "default": Scale("default", train_tokens=1_572_864, eval_tokens=32_768, batch_size=1024, train_steps=1500,
                     expansion=4, sweep_points=4, probe_examples=1200, frontier_points=7),
    "long": Scale("long", train_tokens=6_291_456, eval_tokens=32_768, batch_size=1024, train_steps=6000,
                  expansion=4, sweep_points=4, probe_examples=1200, frontier_points=7),
    "paper": Scale("paper", train_tokens=50_000_000, eval_tokens=1_048_576, batch_size=4096,
                   train_steps=100_000, expansion=16, sweep_points=8, probe_examples=1000),
}


def get_scale(scale: str, **overrides) -> Scale:
    """The preset for `scale` ("smoke" | "default" | "long" | "paper"), with optional field overrides."""
    check_choice("scale", scale, PRESETS)
    return PRESETS[scale].with_(**overrides)
