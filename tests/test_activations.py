"""The activation pipeline: hook reading, BOS/padding removal, the bounded shuffled buffer, the disk cache."""
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from saelib.data.activations import (
    ActivationBuffer,
    ActivationCache,
    BufferConfig,
    cache_activations,
    hook_d_in,
    kept_activations,
    read_hook,
)

PAD, BOS = 0, 1
EXCLUDE = (PAD, BOS)


@pytest.fixture(scope="module")
def model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=3, d_model=16, n_ctx=32, d_head=4, n_heads=3, d_mlp=40, d_vocab=50,
                                  act_fn="gelu", seed=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        m = HookedTransformer(cfg)
    return m.eval()


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(2, 50, (96, 24), generator=g)        # [n_seq, seq]
    t[:, 0] = BOS
    t[::4, 17:] = PAD                                        # some right-padded rows
    return t


def n_kept(tokens):
    return int(((tokens != PAD) & (tokens != BOS)).sum())


# ----------------------------------------------------------------------------- reading a hook

@pytest.mark.parametrize("hook_name, width", [("blocks.1.hook_resid_post", 16), ("blocks.0.hook_resid_pre", 16),
                                              ("blocks.2.hook_mlp_out", 16), ("blocks.0.mlp.hook_post", 40),
                                              ("blocks.1.attn.hook_z", 3 * 4)])
def test_read_hook_matches_run_with_cache(model, tokens, hook_name, width):
    acts = read_hook(model, tokens[:5], hook_name)
    _, cache = model.run_with_cache(tokens[:5])
    assert acts.shape == (5, 24, width) and hook_d_in(model, hook_name) == width
    torch.testing.assert_close(acts, cache[hook_name].flatten(start_dim=2))     # hook_z: heads flattened


def test_forward_stops_at_the_hook(model, tokens):
    fired = []
    model.blocks[2].hook_resid_pre.add_hook(lambda act, hook: fired.append(hook.name))
    try:
        read_hook(model, tokens[:2], "blocks.1.hook_resid_post")
        assert fired == []                                   # no later block ran
        read_hook(model, tokens[:2], "blocks.2.hook_resid_post")
        assert fired == ["blocks.2.hook_resid_pre"]
    finally:
        model.reset_hooks()


def test_bos_and_padding_positions_are_dropped(model, tokens):
    """At hook_embed the activation of token t is W_E[t]: every kept row must be a non-BOS, non-pad token."""
    acts = kept_activations(model, tokens, "hook_embed", EXCLUDE)                # [n_kept, d_model]
    assert acts.shape == (n_kept(tokens), 16)
    kept_ids = tokens[(tokens != PAD) & (tokens != BOS)]
    torch.testing.assert_close(acts, model.W_E[kept_ids])


def test_unknown_hook_name_is_rejected(model, tokens):
    with pytest.raises(ValueError, match="hook_name='blocks.9.hook_resid_post'.*blocks.0.hook_resid_pre"):
        ActivationBuffer(model, tokens, BufferConfig("blocks.9.hook_resid_post", batch_size=8, buffer_size=64))


# ----------------------------------------------------------------------------- the buffer

def make_buffer(model, tokens, **kwargs):
    cfg = dict(hook_name="blocks.1.hook_resid_post", batch_size=64, buffer_size=600, model_batch_size=4,
               progress=False, seed=0)
    cfg.update(kwargs)
    return ActivationBuffer(model, tokens, BufferConfig(**cfg), exclude_token_ids=EXCLUDE)


def held_bytes(buffer) -> int:
    """Bytes of every tensor the buffer object references (measured, not taken from its own accounting)."""
    return sum(v.untyped_storage().nbytes() for v in vars(buffer).values()
               if isinstance(v, torch.Tensor) and v is not buffer.tokens)


@pytest.mark.parametrize("storage_dtype", ["float32", "bfloat16"])
def test_buffer_memory_stays_within_its_byte_bound(model, tokens, storage_dtype, monkeypatch):
    """Measured: the tensors the buffer holds after every batch, and the hook outputs read during refills."""
    import saelib.data.hooks as H  # where the buffer's kept_activations reads the hook

    hook_outputs, original = [], H.read_hook
    monkeypatch.setattr(H, "read_hook", lambda *a: hook_outputs.append(original(*a)) or hook_outputs[-1])
    bound = 60_000
    buffer = make_buffer(model, tokens, buffer_bytes=bound, storage_dtype=storage_dtype)
    assert buffer.max_bytes <= bound
    peak_held = 0
    for _ in range(60):                                     # several refills and two passes over the tokens
        batch = buffer.next_batch()
        assert batch.shape == (64, 16) and batch.dtype == torch.float32
        peak_held = max(peak_held, held_bytes(buffer))
    assert buffer.epoch >= 1
    in_flight = max(h.untyped_storage().nbytes() for h in hook_outputs)    # one forward's output (+ a copy <= it)
    assert in_flight <= buffer.chunk_bytes
    assert peak_held + 2 * in_flight <= bound
    assert buffer.pending.nbytes < buffer.chunk_bytes       # the overflow is less than one model batch


def test_buffer_size_in_activations(model, tokens):
    buffer = make_buffer(model, tokens, buffer_size=500)
    buffer.next_batch()
    assert buffer.storage.shape == (500, 16)
    assert held_bytes(buffer) <= 500 * (16 * 4 + 8) + buffer.chunk_bytes
    assert buffer.max_bytes == 500 * (16 * 4 + 8) + 3 * buffer.chunk_bytes


def _rows_sorted(t: torch.Tensor) -> torch.Tensor:
    """The rows of t ordered by their first column (compare two sets of rows regardless of order)."""
    return t[torch.argsort(t[:, 0])]


def test_same_seed_same_batches_other_seed_other_batches(model, tokens):
    a, b, c = make_buffer(model, tokens), make_buffer(model, tokens), make_buffer(model, tokens, seed=1)
    batches_a = [a.next_batch() for _ in range(25)]
    batches_b = [b.next_batch() for _ in range(25)]
    batches_c = [c.next_batch() for _ in range(25)]
    assert all(torch.equal(x, y) for x, y in zip(batches_a, batches_b, strict=True))
    assert not torch.equal(batches_a[0], batches_c[0])


def test_state_dict_round_trip_resumes_the_same_stream(model, tokens):
    ref = make_buffer(model, tokens)
    first = make_buffer(model, tokens)
    for _ in range(7):
        first.next_batch()
        ref.next_batch()
    state = st_load(st_save(first.state_dict()))            # through safetensors, as checkpoints store it
    resumed = make_buffer(model, tokens)
    resumed.load_state_dict(state)
    for _ in range(25):                                     # crosses refills and an epoch boundary
        assert torch.equal(resumed.next_batch(), ref.next_batch())


def test_state_dict_before_first_batch(model, tokens):
    fresh = make_buffer(model, tokens)
    resumed = make_buffer(model, tokens, seed=5)
    resumed.load_state_dict(fresh.state_dict())
    assert resumed.scale is None
    assert torch.equal(resumed.next_batch(), make_buffer(model, tokens).next_batch())


def test_normalisation_uses_the_first_fill(model, tokens):
    buffer = make_buffer(model, tokens, normalization="unit_mean_squared_norm", refill_fraction=1.0)
    batches = torch.cat([buffer.next_batch() for _ in range(600 // 64)])  # one fill, no refill yet
    assert batches.pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=0.1)
    raw = make_buffer(model, tokens, normalization="none")
    assert raw.next_batch().pow(2).sum(-1).mean().item() > 2.0            # the raw stream is not unit norm
    fixed = make_buffer(model, tokens, scale=0.5)                          # a given scale is used as it is
    torch.testing.assert_close(fixed.next_batch(), 0.5 * make_buffer(model, tokens, normalization="none").next_batch())


def test_every_activation_is_served_from_the_stream(model, tokens):
    """Over one pass with a buffer as large as the data, the served rows are exactly the kept activations."""
    n = n_kept(tokens)
    buffer = make_buffer(model, tokens, buffer_size=n, batch_size=n // 8, normalization="none",
                         refill_fraction=1.0)
    served = torch.cat([buffer.next_batch() for _ in range(8)])
    expected = kept_activations(model, tokens, "blocks.1.hook_resid_post", EXCLUDE)[: len(served)]
    torch.testing.assert_close(_rows_sorted(served), _rows_sorted(expected))


@pytest.mark.parametrize("kwargs, match", [(dict(batch_size=0), "batch_size"),
                                           (dict(buffer_size=10), "buffer_size=10"),
                                           (dict(buffer_bytes=1000), "buffer_bytes=1000"),
                                           (dict(normalization="l2"), "normalization='l2'"),
                                           (dict(storage_dtype="int8"), "storage_dtype='int8'"),
                                           (dict(refill_fraction=0.0), "refill_fraction")])
def test_invalid_buffer_settings(model, tokens, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_buffer(model, tokens, **kwargs)


def test_tokens_without_real_positions_are_refused(model):
    with pytest.raises(ValueError, match="no position outside BOS / padding"):
        make_buffer(model, torch.full((4, 8), PAD))


# ----------------------------------------------------------------------------- the disk cache

@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cache_round_trip(model, tokens, tmp_path, dtype):
    n = 1000
    path = cache_activations(model, "blocks.0.attn.hook_z", tokens, n, tmp_path / dtype, dtype=dtype,
                             model_batch_size=7, exclude_token_ids=EXCLUDE, progress=False)
    cache = ActivationCache(path, batch_size=100, normalization="none")
    expected = kept_activations(model, tokens, "blocks.0.attn.hook_z", EXCLUDE)[:n]         # [n, 12]
    expected = expected.to(getattr(torch, dtype)).float()
    assert len(cache) == n and cache.d_in == 12 and cache.hook_name == "blocks.0.attn.hook_z"
    assert torch.equal(cache.tensor(scaled=False), expected)
    assert isinstance(np.load(path / "activations.npy", mmap_mode="r"), np.memmap)


def test_cache_serves_each_row_once_per_epoch_and_resumes(model, tokens, tmp_path):
    path = cache_activations(model, "blocks.1.hook_resid_post", tokens, 1000, tmp_path, exclude_token_ids=EXCLUDE,
                             progress=False)
    cache = ActivationCache(path, batch_size=100, seed=3)
    everything = cache.tensor()                                           # scaled like the batches
    assert everything.pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-4)
    epoch = torch.cat([cache.next_batch() for _ in range(10)])
    torch.testing.assert_close(_rows_sorted(epoch), _rows_sorted(everything))

    state = st_load(st_save(cache.state_dict()))
    expected = [cache.next_batch() for _ in range(15)]                    # crosses into the third epoch
    resumed = ActivationCache(path, batch_size=100, seed=99)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.next_batch(), e) for e in expected)
    assert not torch.equal(ActivationCache(path, batch_size=100, seed=4).next_batch(), expected[0])


def test_cache_rejects_incomplete_and_oversized(model, tokens, tmp_path):
    with pytest.raises(ValueError, match="n_tokens=100000"):
        cache_activations(model, "blocks.0.hook_resid_post", tokens, 100_000, tmp_path, exclude_token_ids=EXCLUDE)
    (tmp_path / "half").mkdir()
    with pytest.raises(ValueError, match="no complete activation cache"):
        ActivationCache(tmp_path / "half")


def test_training_from_the_buffer_resumes_bitwise(model, tokens, tmp_path):
    """train_sae checkpoints the buffer's state_dict; a crashed run resumed with a fresh buffer ends identical."""
    from saelib.models.relu import ReLUSAE
    from saelib.training.loop import TrainConfig, train_sae

    def run(crash_at=None, resume=False, directory=None):
        torch.manual_seed(0)
        sae = ReLUSAE(16, 32)
        buffer = make_buffer(model, tokens, batch_size=32, buffer_size=256)
        if crash_at is not None:
            calls, original = [0], buffer.next_batch

            def next_batch():
                calls[0] += 1
                if calls[0] == crash_at:
                    raise KeyboardInterrupt
                return original()
            buffer.next_batch = next_batch
        cfg = TrainConfig(total_steps=30, batch_size=32, lr=1e-3, sparsity_coeff=1e-3, resample=False,
                          progress=False, log_every=10, seed=0,
                          checkpoint_dir=str(directory) if directory else None, checkpoint_every=10)
        train_sae(sae, buffer, cfg, resume=resume)
        return sae

    reference = run()
    with pytest.raises(KeyboardInterrupt):
        run(crash_at=17, directory=tmp_path)                          # dies in step 17; checkpoint at step 10
    resumed = run(resume=True, directory=tmp_path)
    for name, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_embedded_model_defaults_drop_its_bos_and_padding():
    from saelib.data.registry import get_tokenizer, load_model, load_text_dataset, model_tokenize

    embedded = load_model("embedded")
    tok = get_tokenizer(embedded)
    rows = model_tokenize(embedded, load_text_dataset("embedded", "heldout", n_docs=40), embedded.cfg.n_ctx)
    buffer = ActivationBuffer(embedded, rows, BufferConfig("blocks.2.hook_resid_post", batch_size=32,
                                                           buffer_size=128, progress=False))
    assert set(buffer.exclude_token_ids) == {tok.bos_id, tok.pad_id}
    assert buffer.next_batch().shape == (32, embedded.cfg.d_model)


def test_cache_shards_each_global_batch_across_ranks(model, tokens, tmp_path):
    path = cache_activations(model, "blocks.1.hook_resid_post", tokens, 1000, tmp_path, exclude_token_ids=EXCLUDE,
                             progress=False)
    single = ActivationCache(path, batch_size=64, seed=3)
    ranks = [ActivationCache(path, batch_size=64, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(20):                                    # crosses an epoch boundary (1000 / 64)
        whole = single.next_batch()
        parts = [c.next_batch() for c in ranks]
        assert all(p.shape == (32, whole.shape[1]) for p in parts)
        assert sorted(map(tuple, torch.cat(parts).tolist())) == sorted(map(tuple, whole.tolist()))
    with pytest.raises(ValueError, match="rank"):
        ActivationCache(path, batch_size=64, rank=2, world_size=2)


def test_buffer_shards_the_token_rows_across_ranks(model, tokens):
    """Under torchrun each rank reads its own sequences and serves batch_size / world_size rows."""
    ranks = [ActivationBuffer(model, tokens, BufferConfig("blocks.1.hook_resid_post", batch_size=64, buffer_size=300,
                                                          model_batch_size=4, progress=False, scale=1.0),
                              exclude_token_ids=EXCLUDE, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(ranks[0].tokens, tokens[0::2]) and torch.equal(ranks[1].tokens, tokens[1::2])
    batches = [b.next_batch() for b in ranks]
    assert all(b.shape == (32, 16) for b in batches)
    # each rank's activations come from its own sequences only (short prefixes can repeat across
    # sequences, so only the activations unique to the other rank's rows tell the two apart)
    own = [kept_activations(model, tokens[r::2], "blocks.1.hook_resid_post", EXCLUDE) for r in range(2)]
    for r in range(2):
        mine = {tuple(row) for row in own[r].tolist()}
        only_other = {tuple(row) for row in own[1 - r].tolist()} - mine
        served = [tuple(row) for row in batches[r].tolist()]
        assert len(only_other) > 100
        assert all(row in mine for row in served) and not any(row in only_other for row in served)
    with pytest.raises(ValueError, match="rank=2"):
        ActivationBuffer(model, tokens, BufferConfig("blocks.1.hook_resid_post", batch_size=64), rank=2, world_size=2)
    with pytest.raises(ValueError, match="multiple of world_size"):
        ActivationBuffer(model, tokens, BufferConfig("blocks.1.hook_resid_post", batch_size=63), rank=0, world_size=2)
