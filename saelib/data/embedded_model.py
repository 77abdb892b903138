"""The embedded language model: a small transformer_lens HookedTransformer trained by saelib on its own corpus.

It stands in for the papers' models when no hub is reachable (docs/design.md §3). Its weights ship with the
package (saelib/data/assets/embedded_model.safetensors + embedded_model.json, a few MB) and loading never
trains unless asked. The JSON holds the HookedTransformerConfig fields, the tokenizer vocabulary, the
corpus and training settings, and the held-out loss and corpus entropies measured right after training.

Regenerate the shipped files (deterministic for the seed; about 10 minutes on one CPU thread):

    python scripts/train_embedded_model.py

Public
  EmbeddedModelConfig                   dataclass: architecture, corpus size, optimiser settings, seed
  train_embedded_model(cfg, log=print)  -> (HookedTransformer, record dict)       trains from scratch
  save_embedded_model(model, tokenizer, record, directory=ASSETS)
  load_embedded_model(device="cpu", directory=ASSETS, train_if_missing=False)
                                        -> (HookedTransformer, WordTokenizer, record)   never trains unless asked
  shipped_settings()                    -> dict of the EmbeddedModelConfig behind the shipped weights
  heldout_tokens(record_or_cfg)         -> LongTensor [n_rows, n_ctx]  the packed held-out rows
  lm_loss(model, tokens, batch_size)    -> mean next-token cross-entropy (nats/token)
  unigram_entropy(tokens) / bigram_entropy(tokens)   empirical entropies of the predicted tokens (nats)
"""
from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saelib.data.corpus import corpus_splits
from saelib.data.tokenizer import WordTokenizer, pack_tokens
from saelib.files import atomic_write, atomic_write_json, read_json
from saelib.validation import check_positive, check_range

ASSETS = Path(__file__).parent / "assets"
WEIGHTS_FILE = "embedded_model.safetensors"
CONFIG_FILE = "embedded_model.json"
REGENERATE = "python scripts/train_embedded_model.py"
N_CHECK_ROWS = 64   # the held-out loss is also recorded on the first N_CHECK_ROWS rows (a fast test reproduces it)


@dataclass
class EmbeddedModelConfig:
    # architecture (HookedTransformerConfig fields)
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 64
    # corpus: documents from saelib.data.corpus.corpus_splits(corpus_seed, n_train_docs, n_heldout_docs)
    corpus_seed: int = 0
    n_train_docs: int = 90_000
    n_heldout_docs: int = 2_000
    # optimisation: AdamW, linear warm-up then cosine decay to 10% of lr
    steps: int = 1_500
    batch_size: int = 32          # rows of n_ctx tokens
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05
    seed: int = 0

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx", "n_train_docs", "n_heldout_docs",
                     "steps", "batch_size"):
            check_positive(name, getattr(self, name), integer=True)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        check_positive("lr", self.lr)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        check_positive("warmup_steps", self.warmup_steps, allow_zero=True, integer=True)

    def model_fields(self, d_vocab: int) -> dict:
        """Keyword arguments of HookedTransformerConfig (JSON-serialisable, stored in embedded_model.json)."""
        return dict(n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
                    d_head=self.d_model // self.n_heads, d_mlp=self.d_mlp, n_ctx=self.n_ctx, d_vocab=d_vocab,
                    act_fn="gelu", normalization_type="LN", positional_embedding_type="standard",
                    default_prepend_bos=True, seed=self.seed)


def build_model(fields: dict, device: str = "cpu"):
    """A freshly initialised HookedTransformer from HookedTransformerConfig keyword arguments."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with warnings.catch_warnings():   # transformer-lens 3.x announces HookedTransformer's removal in 4.0; we pin <4
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        return HookedTransformer(HookedTransformerConfig(**fields, device=device))


# ============================================================================ data, loss and entropies

def _packed(docs, tokenizer: WordTokenizer, n_ctx: int) -> torch.Tensor:
    return pack_tokens((tokenizer.encode(d.text) for d in docs), n_ctx)  # [n_rows, n_ctx]


def heldout_tokens(settings: dict | EmbeddedModelConfig, tokenizer: WordTokenizer | None = None) -> torch.Tensor:
    """The packed held-out rows the recorded loss was measured on. [n_rows, n_ctx]"""
    s = asdict(settings) if isinstance(settings, EmbeddedModelConfig) else settings
    splits = corpus_splits(s["corpus_seed"], n_train=1, n_heldout=s["n_heldout_docs"])
    return _packed(splits["heldout"], tokenizer or WordTokenizer.for_corpus(), s["n_ctx"])


@torch.no_grad()
def lm_loss(model, tokens: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy over all predicted positions of tokens [n_rows, n_ctx], in nats."""
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        per_token = model(tokens[i: i + batch_size], return_type="loss", loss_per_token=True)  # [b, n_ctx - 1]
        total += per_token.double().sum().item()
        count += per_token.numel()
    return total / count


def unigram_entropy(tokens: torch.Tensor) -> float:
    """H(X) of the predicted tokens (every position but each row's first), plug-in estimate, nats."""
    targets = tokens[:, 1:].flatten()
    p = torch.bincount(targets).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def bigram_entropy(tokens: torch.Tensor) -> float:
    """H(X_t | X_{t-1}) over the same predicted positions, plug-in estimate, nats."""
    prev, nxt = tokens[:, :-1].flatten(), tokens[:, 1:].flatten()
    vocab = int(tokens.max()) + 1
    joint = torch.bincount(prev * vocab + nxt, minlength=vocab * vocab).double().view(vocab, vocab)
    joint = joint / joint.sum()                       # [vocab, vocab] p(prev, next)
    marginal = joint.sum(1, keepdim=True)             # [vocab, 1]     p(prev)
    mask = joint > 0
    return float(-(joint[mask] * (joint / marginal.clamp_min(1e-300))[mask].log()).sum())


# ============================================================================ training

def train_embedded_model(cfg: EmbeddedModelConfig, log: Callable[[str], None] = print):
    """Train from scratch on CPU, deterministically for cfg.seed. Returns (model, record)."""
    torch.manual_seed(cfg.seed)
    start = time.time()
    tokenizer = WordTokenizer.for_corpus()
    splits = corpus_splits(cfg.corpus_seed, cfg.n_train_docs, cfg.n_heldout_docs)
    train = _packed(splits["train"], tokenizer, cfg.n_ctx)          # [n_train_rows, n_ctx]
    heldout = _packed(splits["heldout"], tokenizer, cfg.n_ctx)      # [n_heldout_rows, n_ctx]
    log(f"corpus: {train.numel():,} train tokens, {heldout.numel():,} held-out tokens, "
        f"vocab {tokenizer.vocab_size} ({time.time() - start:.0f}s)")

    fields = cfg.model_fields(tokenizer.vocab_size)
    model = build_model(fields)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train), generator=generator)
    cursor = 0
    model.train()
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):                    # next epoch, reshuffled
            order, cursor = torch.randperm(len(train), generator=generator), 0
        batch = train[order[cursor: cursor + cfg.batch_size]]       # [batch, n_ctx]
        cursor += cfg.batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(batch, return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            log(f"step {step:5d}/{cfg.steps}  loss {loss.item():.4f}  lr {lr_at(step):.2e}  "
                f"{time.time() - start:.0f}s")
    model.eval()

    record = {
        "heldout_loss": lm_loss(model, heldout),
        "heldout_loss_check_rows": N_CHECK_ROWS,
        "heldout_loss_check": lm_loss(model, heldout[:N_CHECK_ROWS]),
        "unigram_entropy": unigram_entropy(heldout),
        "bigram_entropy": bigram_entropy(heldout),
        "train_tokens_seen": cfg.steps * cfg.batch_size * cfg.n_ctx,
        "train_wall_seconds": round(time.time() - start, 1),
        "n_params": sum(p.numel() for p in model.parameters()),
        "torch_version": torch.__version__,
    }
    log("record: " + json.dumps(record))
    return model, {"model_fields": fields, "settings": asdict(cfg), **record}


# ============================================================================ save / load

def save_embedded_model(model, tokenizer: WordTokenizer, record: dict, directory: Path | str = ASSETS) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
    atomic_write_json(directory / CONFIG_FILE, {**record, "tokenizer": tokenizer.to_dict()}, indent=1,
                      trailing_newline=True)                   # last: loading needs both files


def shipped_settings(directory: Path | str = ASSETS) -> dict:
    """The EmbeddedModelConfig the shipped weights were trained with (the defaults if none are shipped)."""
    config = Path(directory) / CONFIG_FILE
    return json.loads(config.read_text())["settings"] if config.exists() else asdict(EmbeddedModelConfig())


def load_embedded_model(device: str = "cpu", directory: Path | str = ASSETS, train_if_missing: bool = False):
    """Load the shipped model offline. Returns (HookedTransformer in eval mode, WordTokenizer, record).

    Never trains unless asked: with train_if_missing=True, missing or damaged files (truncated JSON or
    weights) are regenerated first with the default EmbeddedModelConfig (as `python
    scripts/train_embedded_model.py --out directory` would); otherwise they raise an error naming the file.
    """
    directory = Path(directory)
    weights, config = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    if not (weights.exists() and config.exists()):
        if not train_if_missing:
            raise FileNotFoundError(f"embedded model files missing in {directory}; regenerate them with: "
                                    f"{REGENERATE} (or pass train_if_missing=True)")
        return _regenerate(directory, device)
    try:
        return _load(weights, config, device)
    except (ValueError, KeyError, TypeError, OSError, RuntimeError) as e:
        if not train_if_missing:
            raise ValueError(f"embedded model files in {directory} are damaged ({e}); regenerate them with: "
                             f"{REGENERATE} (or pass train_if_missing=True)") from e
        warnings.warn(f"embedded model files in {directory} are damaged ({e}); regenerating them", RuntimeWarning,
                      stacklevel=2)
        return _regenerate(directory, device)


def _regenerate(directory: Path, device: str):
    model, record = train_embedded_model(EmbeddedModelConfig())
    save_embedded_model(model, WordTokenizer.for_corpus(), record, directory)
    return _load(directory / WEIGHTS_FILE, directory / CONFIG_FILE, device)


def _load(weights: Path, config: Path, device: str):
    record = read_json(config)                                   # ValueError naming a truncated file
    tokenizer = WordTokenizer.from_dict(record.pop("tokenizer"))
    model = build_model(record["model_fields"], device=device)
    try:
        state = load_file(str(weights), device=device)
    except SafetensorError as e:
        raise ValueError(f"{weights}: not a valid safetensors file ({e})") from e
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, tokenizer, record
