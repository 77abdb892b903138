"""Every numbered notebook runs end to end at smoke scale (offline, CPU), has a `parameters` cell, and
stops at its validation cell with a clear message when papermill passes a bad parameter."""
import json
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_the_numbered_notebooks_are_00_to_09_and_more_without_duplicates():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert {f"{i:02d}" for i in range(10)} <= set(numbers) and len(numbers) == len(set(numbers)), numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_is_tagged_parameters(path):
    first = _code_cells(path)[0]
    assert "parameters" in first["metadata"].get("tags", [])
    source = "".join(first["source"])
    for name in ("scale", "seed", "device", "model"):
        assert f"{name} =" in source, f"{path.name}: parameters cell lacks {name}"


def _execute(path, out_dir, monkeypatch, **parameters):
    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(out_dir))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return papermill.execute_notebook(str(path), str(out_dir / path.name), parameters=parameters,
                                      kernel_name="python3", cwd=str(NOTEBOOK_DIR), progress_bar=False)


# paths a notebook's defaults leave off, switched on in its smoke run so that they stay tested
# 08: §6's in-notebook 1x-vs-3x check (default: the long scale) and §3's coarse-vs-full check (smoke's operating grid
# has 2 points, which a 3-point frontier contains; default: 4 and 7)
SMOKE_EXTRA = {"08_pareto": {"budget_factor": 3.0, "n_points": 3}}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_smoke_scale(path, tmp_path, monkeypatch):
    _execute(path, tmp_path, monkeypatch, scale="smoke", **SMOKE_EXTRA.get(path.stem, {}))
    figures = list((tmp_path / "smoke" / "figures").glob("*.png"))
    claims = tmp_path / "smoke" / "claims" / f"{path.stem}.json"
    assert figures, f"{path.name} saved no figure"
    assert claims.exists() and json.loads(claims.read_text()), f"{path.name} recorded no claim"
    if path.stem == "08_pareto":
        assert (tmp_path / "smoke" / "figures" / "08_budget_1x_3x.png").exists()
        made = [c["claim"] for c in json.loads(claims.read_text())]
        assert any("stopped moving" in c for c in made)
        assert "The equal-L0 verdicts are the same with 2 and 3 points per frontier" in made
        assert json.loads((tmp_path / "smoke" / "frontiers" / "08_pareto.json").read_text())["frontiers"]


def _error_of(path, tmp_path, monkeypatch, **parameters) -> str:
    with pytest.raises(papermill.PapermillExecutionError) as info:
        _execute(path, tmp_path, monkeypatch, **parameters)
    err = info.value
    assert err.ename == "ValueError", f"expected a ValueError, got {err.ename}: {err.evalue}"
    # the failing cell comes right after the parameters cell (and papermill's injected parameters)
    executed = json.loads((tmp_path / path.name).read_text())
    code = [c for c in executed["cells"] if c["cell_type"] == "code"]
    failing = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failing and failing[0] <= 2, f"the error surfaced in code cell {failing}, not at the validation cell"
    return err.evalue


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_unknown_scale_stops_at_validation(path, tmp_path, monkeypatch):
    message = _error_of(path, tmp_path, monkeypatch, scale="huge")
    assert "scale" in message and "'smoke'" in message and "'default'" in message


def _notebook(prefix):
    return next(p for p in NOTEBOOKS if p.name.startswith(prefix))


def test_unknown_kernel_stops_at_validation(tmp_path, monkeypatch):
    message = _error_of(_notebook("05"), tmp_path, monkeypatch, scale="smoke", kernels=["rectangle", "box"])
    assert "kernels" in message and "'rectangle'" in message


def test_negative_coefficient_stops_at_validation(tmp_path, monkeypatch):
    message = _error_of(_notebook("05"), tmp_path, monkeypatch, scale="smoke", sparsity_coeffs=[0.1, -1.0])
    assert "sparsity_coeffs" in message


def test_figures_readme_lists_exactly_the_committed_figures():
    import re

    figures = Path(__file__).resolve().parent.parent / "figures"
    listed = set(re.findall(r"`(\d\d_[a-z0-9_]+)`", (figures / "README.md").read_text()))
    committed = {p.stem for p in figures.glob("[0-9][0-9]_*.png")}
    assert listed == committed


def test_claims_readme_block_is_refreshed(tmp_path, monkeypatch):
    from saelib.lab.claims import README_END, README_START, SUMMARY_END, SUMMARY_START, Claims, update_readme

    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path))
    claims = Claims("99_test", "smoke")
    claims.add("a claim", "a source", "1", "2", holds=False)
    claims.add("another claim", "a source", "1", "1", holds=True)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{SUMMARY_START}\n30 of 45 hold\n{SUMMARY_END}\nmiddle\n"
                      f"{README_START}\nstale table\n{README_END}\nend\n")
    assert update_readme(readme, "smoke")
    text = readme.read_text()
    assert "stale table" not in text and "| 99_test | — | a claim |" in text
    assert "**no**" in text and text.endswith("end\n")
    assert "30 of 45" not in text and "1 of 2 claims hold" in text
    assert "| `99_test` (1 of 2) | another claim | a claim |" in text
    readme.write_text(f"intro\n{README_START}\nstale\n{README_END}\n")      # the summary block is optional
    assert update_readme(readme, "smoke") and "| 99_test | — | a claim |" in readme.read_text()


def test_claims_at_two_scales_side_by_side(tmp_path, monkeypatch):
    from saelib.lab.claims import Claims, assemble_comparison, run_parameters

    monkeypatch.setenv("SAELIB_OUTPUT_DIR", str(tmp_path))
    base, other = Claims("99_test", "smoke"), Claims("99_test", "long")
    base.add("kept", "s", "e", "0.1 ± 0.01", holds=True, n_seeds=3)
    base.add("flips", "s", "e", "0.2", holds=True, n_seeds=3)
    base.add("only at smoke", "s", "e", "x", holds=False)
    other.add("kept", "s", "e", "0.05 ± 0.01", holds=True, n_seeds=3)
    other.add("flips", "s", "e", "0.3", holds=False, n_seeds=2)
    other.add("only at long", "s", "e", "y", holds=False)
    Claims("98_not_run_long", "smoke").add("elsewhere", "s", "e", "z", holds=True)
    executed = tmp_path / "long" / "executed"
    executed.mkdir(parents=True)
    executed.joinpath("99_test.ipynb").write_text(json.dumps({"cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": ["scale = 'default'\n"]},
        {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]},
         "source": ["# Parameters\n", "scale = \"long\"\n", "families = [\"standard\", \"gated\"]\n"]}]}))
    assert run_parameters("long") == {"99_test": ['scale = "long"', 'families = ["standard", "gated"]']}
    text = assemble_comparison("smoke", "long").read_text()
    assert "2 claims made at both scales; the verdict differs for 1 of them." in text
    assert "| 99_test | kept | yes | yes | no | 0.1 ± 0.01 | 0.05 ± 0.01 | 3 / 3 |" in text
    assert "| 99_test | flips | yes | **no** | **yes** | 0.2 | 0.3 | 3 / 2 |" in text
    assert "Made at long only:\n\n- 99_test: only at long — **no**" in text
    assert "Made at smoke only:\n\n- 99_test: only at smoke — **no**" in text
    assert "elsewhere" not in text                       # notebooks not run at the other scale are not compared
    assert '`scale = "long"`; `families = ["standard", "gated"]`' in text


def test_features_notebook_rejects_a_model_without_corpus_labels(tmp_path, monkeypatch):
    message = _error_of(_notebook("11"), tmp_path, monkeypatch, scale="smoke", model="gpt2-small")
    assert "model" in message and "'embedded'" in message


@pytest.mark.parametrize("prefix, name", [("02", "tied_bias"), ("07", "init_ablation")])
def test_ablation_switches_must_be_booleans(prefix, name, tmp_path, monkeypatch):
    message = _error_of(_notebook(prefix), tmp_path, monkeypatch, scale="smoke", **{name: "yes"})
    assert f"{name}='yes'" in message and "True, False" in message
