"""Data-parallel training: torchrun --nproc_per_node=2 (gloo, CPU) matches a single process."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saelib.training.checkpoint import list_checkpoints
from saelib.training.distributed import DistInfo, all_gather_cat, all_reduce, init_distributed, unwrap
from saelib.training.loop import train_sae

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ddp_worker", ROOT / "tests" / "ddp_worker.py")
assert spec is not None and spec.loader is not None
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)


def test_helpers_fall_back_to_a_single_process():
    assert init_distributed() == DistInfo(0, 1, 0)
    t = torch.arange(3.0)
    assert all_reduce(t.clone(), "mean").tolist() == [0.0, 1.0, 2.0]
    assert torch.equal(all_gather_cat(t), t)
    m = torch.nn.Linear(2, 2)
    assert unwrap(m) is m


# one xdist worker runs this whole module, and the fixture is session-scoped, so torchrun starts once
# (a module-scoped fixture is set up again whenever xdist interleaves another module's tests)
pytestmark = pytest.mark.xdist_group("torchrun")


@pytest.fixture(scope="session")
def torchrun_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_worker.py"), str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.parametrize("case", list(worker.CASES))
def test_torchrun_two_ranks_match_one_process(case, torchrun_output):
    sae = worker.make(case)
    history = train_sae(sae, worker.data(), worker.config(case))
    ddp = load_file(torchrun_output / f"{case}.safetensors")
    for name, value in sae.state_dict().items():
        diff = (ddp[name] - value).abs().max().item()
        assert diff <= 1e-5, f"{case}: {name} differs by {diff}"
    assert any((ddp[n] - worker.make(case).state_dict()[n]).abs().max() > 1e-3 for n in ddp)   # it trained
    ddp_history = json.loads((torchrun_output / f"{case}.json").read_text())
    assert [h["step"] for h in ddp_history] == [h["step"] for h in history]
    for a, b in zip(ddp_history, history, strict=True):                # logged values are global-batch means
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["l0"] == pytest.approx(b["l0"], rel=1e-4)


def test_rank_zero_alone_writes_checkpoints(torchrun_output):
    names = [p.name for p in list_checkpoints(torchrun_output / "ckpt")]
    assert names == ["step_000000020.json", "step_000000030.json"]
    assert not list((torchrun_output / "ckpt").glob(".*tmp*"))


def test_resampling_keeps_ranks_identical(torchrun_output):
    ranks = json.loads((torchrun_output / "ranks.json").read_text())
    assert ranks["n_resampled"] >= 10
    assert ranks["max_diff_between_ranks"] == 0.0


def test_activation_buffer_shards_rows_and_shares_one_scale(torchrun_output):
    ranks = json.loads((torchrun_output / "buffer.json").read_text())
    assert [(r["rank"], r["world_size"], r["rows"]) for r in ranks] == [(0, 2, 32), (1, 2, 32)]
    assert ranks[0]["first_token_row"] != ranks[1]["first_token_row"]          # rows 0 and 1 of the tokens
    assert ranks[0]["own_estimate"] != ranks[1]["own_estimate"]
    mean = sum(r["own_estimate"] for r in ranks) / 2
    assert all(r["scale"] == pytest.approx(mean, rel=1e-12) for r in ranks)


def test_the_sparse_case_takes_the_sparse_step():
    sae = worker.make("jumprelu_sparse")
    x = worker.data()[:32]                                  # one rank's share of a global batch of 64
    from saelib.fast import training_loss  # the step train_sae chooses (sae.loss is dense)

    assert callable(training_loss(sae, torch.device("cpu"))(x, 3e-3)._f)
