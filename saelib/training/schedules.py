"""Learning-rate and sparsity-coefficient schedules, as pure functions of the step.

A schedule that is a plain function of `step` (and of the step of the last resample) needs no state of
its own, so a resumed run recovers it exactly from the step counter in the checkpoint.

Convention: `step` is the number of optimiser steps already taken (0 for the first update), so the
first update gets a small but non-zero learning rate and the last update is not wasted at lr = 0.

  LR warm-up   multiplier (t + 1) / W for the first W steps; the Gated paper re-applies the same warm-up
               after each resample, counted from the resample step.
  LR decay     linear to zero over the last fraction D of the run (Anthropic, April 2024: D = 20%).
  lambda       linear warm-up from 0 to its final value over the first W_lambda steps (April 2024: 5%).
"""
from __future__ import annotations


def warmup(step: int, warmup_steps: int) -> float:
    """Linear ramp (step + 1) / warmup_steps, capped at 1; 1 throughout when warmup_steps == 0."""
    if warmup_steps <= 0 or step + 1 >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0, decay_steps: int = 0,
                  last_resample_step: int | None = None) -> float:
    """Factor applied to the base learning rate for the update numbered `step` (0-based).

    warm-up from 0, and again from `last_resample_step` when features were resampled; linear decay to
    0 over the last `decay_steps` updates.
    """
    m = warmup(step, warmup_steps)
    if last_resample_step is not None and step >= last_resample_step:
        m = min(m, warmup(step - last_resample_step, warmup_steps))
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        m *= (total_steps - step) / decay_steps        # 1 at the decay start, 1/decay_steps at the end
    return m


def sparsity_coeff_at(step: int, sparsity_coeff: float, warmup_steps: int = 0) -> float:
    """lambda for the update numbered `step`: linear warm-up from 0 over `warmup_steps`."""
    return sparsity_coeff * warmup(step, warmup_steps)
