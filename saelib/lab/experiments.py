"""The experiment layer every notebook shares: where activations come from, what to train, and a
cached runner, so that a sweep of many SAEs reads its activations once and a figure that two
notebooks share is trained once.

    site = LMSite("embedded", "blocks.2.hook_resid_post", get_scale("default"))   # caches activations
    protocol, tuning = notebook_protocol(site, {})    # saelib.lab.protocol: how every SAE trains, LRs swept
    spec = SAESpec("jumprelu", sparsity_coeff=1e-2, options={"kernel": "triangular"})
    result = run(site, spec, seed=0, protocol=protocol)   # trains, or loads outputs/<scale>/runs/<key>/
    runs = sweep(site, specs, seeds=(0, 1, 2), protocol=protocol)   # every spec at every seed (spec-major)
    rows = [r.row() for r in runs]    # dicts: label, sparsity_coeff, seed, point, l0, fvu, delta_lm_loss, ...
    result, monitor = run_watched(site, spec, 0, watch=lambda b, sae: ThresholdMonitor(b, sae, batch_size=1024),
                                  protocol=protocol)      # the same run, watched between steps (and cached)
    frontier_specs("gated", n)        # the shared frontier grid; middle_points(specs, 2) for ablation arms

The cache key is the site, the spec (label and `train` left out), the constructor options the run uses, the
exact TrainConfig and a fingerprint of the library code: identical training is done once, whichever notebook
asks first.

A `SyntheticSite` serves activations with known features instead (and adds `feature_recovery`).
Nothing here is specific to one notebook; notebooks hold only the narrative and the calls.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from saelib.eval.metrics import evaluate_sae
from saelib.files import atomic_write_json, read_json
from saelib.io import load_sae, save_sae
from saelib.lab import run_claims
from saelib.lab.paths import output_dir
from saelib.lab.protocol import Protocol, held_out_objective
from saelib.lab.protocol import train_config as protocol_train_config
from saelib.lab.scales import Scale
from saelib.lab.sites import LMSite, Site, SyntheticSite, model_fingerprint  # noqa: F401  (re-exported)
from saelib.lab.timing import timed
from saelib.models.architectures import ARCHITECTURES, create_sae
from saelib.models.base import SAE
from saelib.progress import progress_enabled, tqdm
from saelib.training.loop import TrainConfig, train_sae
from saelib.validation import check_choice, check_positive

# How every SAE is trained (learning rates, schedules, clipping, budget, per-family constructor options)
# is one visible object, saelib.lab.protocol.Protocol; run() and sweep() take it as `protocol=`.


@dataclass
class SAESpec:
    """One SAE to train: architecture, constructor options, sparsity coefficient, training overrides."""

    architecture: str
    sparsity_coeff: float = 0.0
    options: dict = field(default_factory=dict)       # constructor keyword arguments
    train: dict = field(default_factory=dict)         # TrainConfig overrides (lr, batch_size, ...)
    d_sae: int | None = None                          # default: scale.expansion * d_in
    label: str | None = None                          # legend name; default: the architecture

    def __post_init__(self):
        check_choice("architecture", self.architecture, ARCHITECTURES)
        check_positive("sparsity_coeff", self.sparsity_coeff, allow_zero=True)
        if self.d_sae is not None:
            check_positive("d_sae", self.d_sae, integer=True)
        unknown = set(self.train) - set(TrainConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"train={sorted(unknown)} are not TrainConfig fields; allowed: "
                             f"{', '.join(sorted(TrainConfig.__dataclass_fields__))}")
        if self.label is None:
            self.label = self.architecture


@dataclass
class RunResult:
    spec: SAESpec
    sae: SAE
    metrics: dict          # floats (and the feature frequencies as a list)
    history: list[dict]
    path: Path
    loaded: bool = False   # True when run() loaded it from the cache
    seed: int = 0          # the training seed

    def row(self) -> dict:
        """A flat dict for tables and plots: spec fields, the seed, `point` (the same for every seed of one
        spec: what saelib.lab.pareto.seed_summary groups by) and the scalar metrics."""
        scalars = {k: v for k, v in self.metrics.items() if not isinstance(v, list)}
        return {"label": self.spec.label, "architecture": self.spec.architecture,
                "sparsity_coeff": self.spec.sparsity_coeff, **self.spec.options, "seed": self.seed,
                "point": spec_id(self.spec), **scalars}


def spec_id(spec: SAESpec) -> str:
    """A short id of a spec (label included), the same for every seed and protocol."""
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True, default=str).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- training and caching

def train_config(spec: SAESpec, scale: Scale, seed: int = 0, protocol: Protocol | None = None) -> TrainConfig:
    """The TrainConfig for `spec` at `scale` under `protocol` (default Protocol()), then spec.train on top;
    see saelib.lab.protocol.train_config."""
    return protocol_train_config(spec, scale, seed, protocol)


def effective_options(spec: SAESpec, protocol: Protocol | None = None) -> dict:
    """The constructor options a run uses: the protocol's options for the family, then the spec's own."""
    return {**(protocol or Protocol()).options_for(spec.architecture), **spec.options}


def run_key(site: Site, spec: SAESpec, cfg: TrainConfig, options: dict | None = None) -> str:
    """The cache key of a run: the activations (site), the spec, the training settings and a fingerprint of
    the library code that trains and evaluates it (saelib.lab.fingerprint: models, fast, training, metrics)."""
    from saelib.lab.fingerprint import code_fingerprint

    # options: the constructor options the run uses (effective_options); None: those of the default Protocol()
    # spec.train is left out: its whole effect is in cfg (so an LR-sweep spec with train={"lr": x} and a frontier
    # spec trained at the protocol's lr x share one run)
    spec_fields = asdict(spec) | {"label": None, "train": None,
                                  "options": effective_options(spec) if options is None else options}
    payload = {"site": site.key, "spec": spec_fields, "train": asdict(cfg) | {
        k: None for k in ("progress", "log_every", "checkpoint_dir", "device")}, "code": code_fingerprint()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_path(site: Site, key: str) -> Path:
    """Where the run with cache key `key` lives: outputs/<scale>/runs/<key>/ (metrics.json + sae/)."""
    return output_dir(site.scale.name) / "runs" / key


def _planned(site: Site, spec: SAESpec, seed: int, protocol: Protocol | None) -> tuple[TrainConfig, dict, Path]:
    """The exact TrainConfig, the SAE's constructor options and the cache folder of one run."""
    cfg = train_config(spec, site.scale, seed, protocol)
    options = effective_options(spec, protocol)
    return cfg, options, run_path(site, run_key(site, spec, cfg, options))


def evaluate(site: Site, sae: SAE) -> dict:
    """Metrics on the site's held-out activations (+ LM or ground-truth metrics from the site)."""
    m = evaluate_sae(sae, site.eval_acts)
    metrics = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in m.items()}
    metrics["gamma"] = metrics["relative_reconstruction_bias"]
    metrics["gamma_v1"] = metrics["relative_reconstruction_bias_v1"]
    metrics.update(site.extra_metrics(sae))
    return metrics


_RETRAINED: set[str] = set()          # keys retrained in this process under force_retrain (once each)
_FORCE_RETRAIN = [False]              # the session default, set by check_parameters(force_retrain=...)
_TRAIN_CALLS = [0]                    # counts actual trainings, so run() can say "loaded" or "trained"


def set_force_retrain(flag: bool) -> None:
    """Make every later run()/sweep() in this process retrain its SAEs once (check_parameters calls this with
    the notebook's `force_retrain` parameter). The environment variable SAELIB_FORCE_RETRAIN=1 does the same
    for a whole run_all.sh."""
    _FORCE_RETRAIN[0] = bool(flag)


def force_retrain_default() -> bool:
    import os

    return _FORCE_RETRAIN[0] or os.environ.get("SAELIB_FORCE_RETRAIN", "0").strip().lower() in ("1", "true", "yes")


def run(site: Site, spec: SAESpec, seed: int = 0, *, force: bool = False, device: str = "cpu",
        force_retrain: bool | None = None, verbose: bool | None = None, protocol: Protocol | None = None) -> RunResult:
    """Train `spec` on `site` (seeded), evaluate it, and cache everything under outputs/<scale>/runs/<key>/;
    a later call with the same site, spec, seed, settings and library code (see run_key) loads it instead.

    force_retrain: retrain even when cached (None: the session default, see set_force_retrain); a key is
    retrained once per process, so a sweep repeated later in the same notebook loads what was just trained.
    `force=True` retrains every time. With `verbose`, prints one line: loaded from the cache or trained
    (default: in interactive sessions only, see saelib.progress; a batch run's saved outputs then depend on
    the results only, not on what happened to be cached).
    protocol: how to train (saelib.lab.protocol.Protocol; None: Protocol(), whose learning rates are untuned)."""
    if force_retrain is None:
        force_retrain = force_retrain_default()
    key = _planned(site, spec, seed, protocol)[2].name
    if force_retrain and key not in _RETRAINED:
        force = True
        _RETRAINED.add(key)
    before = _TRAIN_CALLS[0]
    result = _run_once(site, spec, seed, force=force, device=device, protocol=protocol)
    result.loaded = _TRAIN_CALLS[0] == before
    if verbose is None:
        verbose = progress_enabled()
    if verbose:
        what = f"k={spec.options['k']}" if "k" in spec.options else f"lambda={spec.sparsity_coeff:.3g}"
        print(f"{spec.label} ({what}, seed {seed}): "
              f"{'loaded from the run cache' if result.loaded else 'trained (now in the run cache)'}")
    return result


def _run_once(site: Site, spec: SAESpec, seed: int = 0, *, force: bool = False, device: str = "cpu",
              protocol: Protocol | None = None) -> RunResult:
    """Train `spec` on `site` (seeded), evaluate it, and cache everything under outputs/<scale>/runs/."""
    cfg, options, path = _planned(site, spec, seed, protocol)
    cached = None if force else load_cached_run(path, spec, device=device)
    while cached is None and not run_claims.try_claim(path):
        # another process (the other notebook of run_all.sh's pair, a worker) is training this run: wait, load
        with timed("waiting", scale=site.scale.name):
            run_claims.wait_for(path)
        cached = load_cached_run(path, spec, device=device)
    if cached is not None:
        cached.seed = seed
        return cached
    try:
        return _train_and_save(site, spec, seed, cfg, options, path)[0]
    finally:
        run_claims.release(path)


def _train_unless_claimed(site: Site, spec: SAESpec, seed: int, *, force: bool, protocol: Protocol | None) -> bool:
    """Train the run into the cache if it is missing (or `force`) and no other process has claimed it; True when
    trained here. Never waits: a sweep trains the unclaimed runs first and waits for the others afterwards."""
    cfg, options, path = _planned(site, spec, seed, protocol)
    if not force and (path / "metrics.json").exists():
        return False
    if not run_claims.try_claim(path):
        return False
    try:
        if not force and (path / "metrics.json").exists():      # finished by another process just now
            return False
        _train_and_save(site, spec, seed, cfg, options, path)
        return True
    finally:
        run_claims.release(path)


def _train_and_save(site: Site, spec: SAESpec, seed: int, cfg: TrainConfig, options: dict, path: Path, *,
                    save: bool = True, watch: Callable | None = None) -> tuple[RunResult, object]:
    """Train one run (seeded SAE, the site's batches for `seed`), evaluate it, and save it in its cache folder
    `path` (unless save=False). watch(batches, sae) may wrap the batch source; returns (result, the batch source
    it trained on)."""
    d_sae = spec.d_sae or site.scale.expansion * site.d_in
    torch.manual_seed(seed)
    sae = create_sae(spec.architecture, site.d_in, d_sae, **options)
    batches = site.train_batches(cfg.batch_size, seed)
    if watch is not None:
        batches = watch(batches, sae)
    _TRAIN_CALLS[0] += 1
    with timed("sae_training", scale=site.scale.name, saes=1, tokens=cfg.n_steps * cfg.batch_size):
        history = train_sae(sae, batches, cfg)
    sae.eval()
    metrics = evaluate(site, sae)
    # the training objective on held-out activations (what the LR sweep of saelib.lab.protocol compares)
    metrics["objective"] = held_out_objective(sae, site.eval_acts, spec.sparsity_coeff)
    if save:
        save_sae(sae, path / "sae")
        record = {"spec": asdict(spec), "options": options, "site": site.key, "train": asdict(cfg),
                  "metrics": metrics, "history": history}
        atomic_write_json(path / "metrics.json", record, default=str)      # written last: the commit point
    return RunResult(spec, sae, metrics, history, path, seed=seed), batches


def run_watched(site: Site, spec: SAESpec, seed: int = 0, *, watch: Callable,
                protocol: Protocol | None = None) -> tuple[RunResult, object]:
    """Train `spec` as run() does, with the batch source wrapped by watch(batches, sae) -> a batch source (e.g. a
    saelib.eval.monitor.ThresholdMonitor, which measures the SAE between steps), and return (result, that source).

    The wrapper only reads the SAE and passes the batches on, so this is the same training as run()'s (same seed,
    batches, settings: bitwise the same SAE, tests/test_experiments_extra.py). It always trains (what the wrapper
    records is not cached), and when the run cache lacks the run it stores it there, so that a later run() or
    sweep() of the same spec and seed loads it instead of training it a second time."""
    cfg, options, path = _planned(site, spec, seed, protocol)
    store = not (path / "metrics.json").exists() and run_claims.try_claim(path)
    try:
        result, batches = _train_and_save(site, spec, seed, cfg, options, path, save=store, watch=watch)
    finally:
        if store:
            run_claims.release(path)
    result.loaded = False
    return result, batches


def load_cached_run(path: Path, spec: SAESpec, *, device: str = "cpu") -> RunResult | None:
    """The run cached in `path` (metrics.json + sae/), or None when there is none. A damaged entry
    (truncated or corrupt JSON or weights, e.g. after a crash) is reported with a warning and also gives
    None, so the caller retrains it instead of crashing."""
    if not (path / "metrics.json").exists():
        return None
    try:
        record = read_json(path / "metrics.json")
        metrics, history = record["metrics"], record["history"]
        if not isinstance(metrics, dict) or not isinstance(history, list):
            raise ValueError(f"{path / 'metrics.json'}: metrics must be an object and history a list")
        sae = load_sae(path / "sae", device=device)
    except (ValueError, KeyError, TypeError, OSError) as e:
        warnings.warn(f"run cache entry {path} is damaged ({e}); retraining it", RuntimeWarning, stacklevel=2)
        return None
    return RunResult(spec, sae, metrics, history, path)


def sweep(site: Site, specs: list[SAESpec], seed: int = 0, *, progress: bool = True,
          force_retrain: bool | None = None, verbose: bool | None = None, seeds: Sequence[int] | None = None,
          protocol: Protocol | None = None, workers: int | None = None) -> list[RunResult]:
    """run() every spec (cached ones load instantly); a progress bar over the sweep (interactive sessions
    only, see saelib.progress) and, with `verbose` (default: the same), one line saying how many were loaded
    and how many trained.

    seeds: train every spec at each of these seeds (instead of `seed`); the result is spec-major
    ([spec0 seed0, spec0 seed1, ..., spec1 seed0, ...]) and each RunResult (and its row()) carries its seed.
    protocol: how to train every spec (saelib.lab.protocol.Protocol; None: Protocol()).
    workers: processes that train the runs missing from the cache (saelib.lab.workers; None: n_workers(), 1:
    train them here); the results are the same either way.
    A run that another process is training (saelib.lab.run_claims: run_all.sh runs two notebooks at a time) is
    not trained again: the sweep trains the others first, then waits for it and loads it."""
    from saelib.lab.workers import n_workers, train_missing

    if force_retrain is None:
        force_retrain = force_retrain_default()
    seed_list = [seed] if seeds is None else [int(s) for s in seeds]
    jobs = [(spec, s) for spec in specs for s in seed_list]
    workers = n_workers() if workers is None else workers
    check_positive("workers", workers, integer=True)
    missing: list[tuple[SAESpec, int, bool]] = []
    keys: list[str] = []                                 # the run keys of `missing`
    for spec, s in jobs:
        path = _planned(site, spec, s, protocol)[2]
        key = path.name
        force = force_retrain and key not in _RETRAINED
        if key not in keys and (force or not (path / "metrics.json").exists()) \
                and not run_claims.claimed_by_other(path):      # another process trains it: wait for it below
            missing.append((spec, s, force))
            keys.append(key)
    bar = tqdm(total=len(jobs), desc="SAEs", disable=not progress)
    trained: set[str] = set()                            # keys trained here, before the loop below loads them
    if workers > 1 and len(missing) > 1 and train_missing(site, missing, protocol, workers=workers,
                                                          progress_bar=bar):
        trained = set(keys)
        _RETRAINED.update(k for k, (_, _, force) in zip(keys, missing, strict=True) if force)
    else:
        # in this process: first the runs nobody else is training, then (below) wait for the others and load them
        for (spec, s, force), key in zip(missing, keys, strict=True):
            if _train_unless_claimed(site, spec, s, force=force, protocol=protocol):
                trained.add(key)
                if force:
                    _RETRAINED.add(key)
    results = []
    for spec, s in jobs:
        result = run(site, spec, s, force_retrain=force_retrain, verbose=False, protocol=protocol)
        if result.path.name in trained:
            result.loaded = False                        # trained just now (in a worker process or above)
        if not (workers > 1 and result.path.name in trained):
            bar.update(1)
        results.append(result)
    bar.close()
    if verbose is None:
        verbose = progress_enabled()
    if verbose and results:
        labels = sorted({r.spec.label or r.spec.architecture for r in results})
        loaded = sum(r.loaded for r in results)
        seed_text = f"seed {seed}" if seeds is None else f"seeds {', '.join(map(str, seed_list))}"
        print(f"{len(results)} SAE{'s' if len(results) > 1 else ''} ({', '.join(labels)}; {seed_text}): "
              f"{loaded} loaded from the run cache, {len(results) - loaded} trained")
    return results


def coefficient_grid(low: float, high: float, n: int) -> list[float]:
    """n sparsity coefficients spaced evenly in log space from low to high (inclusive)."""
    check_positive("low", low)
    check_positive("high", high)
    check_positive("n", n, integer=True)
    if n == 1:
        return [math.sqrt(low * high)]
    return [float(low * (high / low) ** (i / (n - 1))) for i in range(n)]


# ----------------------------------------------------------------------------- the shared frontiers

# Sparsity-coefficient ranges on unit-mean-squared-norm activations (the embedded model's residual stream and
# the synthetic default). TopK sweeps k instead. ReLU and Gated: 0.01-0.27 spans L0 of roughly 3-100 under the
# shared protocol (gradient clipping, tuned learning rates; at the old unclipped settings lambda 1 gave L0 ~1-2,
# below anything a comparison needs).
# JumpReLU: above lambda ~ 0.1 its L0 saturates at ~5 in a default-scale run (the L0 penalty moves
# log-thresholds at Adam's rate whatever lambda), so the grid reaches down to 1e-4 (measured at default
# scale, blocks.2.hook_resid_post: lambda 3e-4 -> L0 21.7, 1e-3 -> 16.6, 3e-3 -> 10.2, 0.3 and 1 -> 5.0).
COEFFICIENT_RANGES: dict[str, tuple[float, float]] = {
    "standard": (0.01, 0.27),      # 4 points: 0.01, 0.03, 0.09, 0.27
    "gated": (0.01, 0.27),
    "jumprelu": (1e-4, 0.03),
}
TOPK_KS = (8, 16, 32, 64, 128, 256)
TOPK_MAX_DENSITY = 4       # TopK frontiers keep k <= d_sae / TOPK_MAX_DENSITY (denser codes are not sparse)


def default_max_k(site: Site) -> int:
    """The largest k of the shared TopK frontier on `site`: d_sae / TOPK_MAX_DENSITY."""
    return site.scale.expansion * site.d_in // TOPK_MAX_DENSITY


def middle_points(values: Sequence, n: int = 2) -> list:
    """The n central elements of `values` (all of them when there are at most n), e.g. the lambdas at which an
    ablation arm is trained: middle_points([a, b, c, d]) == [b, c]."""
    values = list(values)
    if len(values) <= n:
        return values
    start = (len(values) - n) // 2
    return values[start:start + n]


def frontier_specs(architecture: str, n_points: int, *, label: str | None = None,
                   coeff_range: tuple[float, float] | None = None, options: dict | None = None,
                   train: dict | None = None, max_k: int | None = None) -> list[SAESpec]:
    """The sweep every notebook uses for a family's Pareto frontier (identical specs -> shared cache).

    For TopK, n_points values of k from TOPK_KS (smallest first), only those <= max_k when given (a
    small SAE, e.g. d_sae 128 at smoke scale, cannot keep 256 latents); otherwise n_points coefficients
    spaced evenly in log space over COEFFICIENT_RANGES[architecture] (or `coeff_range`).
    """
    check_choice("architecture", architecture, ARCHITECTURES)
    options, train = dict(options or {}), dict(train or {})
    if architecture == "topk":
        if max_k is not None:
            check_positive("max_k", max_k, integer=True)
        ks = [k for k in TOPK_KS if max_k is None or k <= max_k] or [int(max_k or TOPK_KS[0])]
        n = min(n_points, len(ks))
        picks = sorted({round(i * (len(ks) - 1) / max(1, n - 1)) for i in range(n)})
        return [SAESpec("topk", 0.0, options | {"k": ks[i]}, train, label=label or "topk") for i in picks]
    low, high = coeff_range or COEFFICIENT_RANGES[architecture]
    return [SAESpec(architecture, c, options, train, label=label or architecture)
            for c in coefficient_grid(low, high, n_points)]
