"""The small public API (`from saelib import ...`), the stable import paths, the version, and docs that
exist: every design-document reference in the repository points at a section of docs/design.md."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

import saelib

REPO = Path(__file__).resolve().parents[1]


def test_every_exported_name_exists():
    missing = [name for name in saelib.__all__ if not hasattr(saelib, name)]
    assert not missing
    assert len(set(saelib.__all__)) == len(saelib.__all__)


def test_the_public_names_are_the_library_objects():
    from saelib.eval import metrics
    from saelib.io import load_sae, save_sae
    from saelib.models.jumprelu import JumpReLUSAE

    assert saelib.JumpReLUSAE is JumpReLUSAE
    assert saelib.relative_reconstruction_bias is metrics.relative_reconstruction_bias
    assert saelib.relative_reconstruction_bias_v1 is metrics.relative_reconstruction_bias_v1
    assert saelib.evaluate_sae is metrics.evaluate_sae
    assert (saelib.save_sae, saelib.load_sae) == (save_sae, load_sae)
    for name in ("ReLUSAE", "GatedSAE", "JumpReLUSAE", "TopKSAE", "TrainConfig", "train_sae", "evaluate_sae",
                 "save_sae", "load_sae", "load_model", "__version__"):
        assert name in saelib.__all__


def test_stable_import_paths():
    from saelib.io import load_sae, save_sae  # noqa: F401
    from saelib.kernels import get_kernel
    from saelib.metrics import relative_reconstruction_bias, relative_reconstruction_bias_v1  # noqa: F401
    from saelib.synthetic import SyntheticActivations
    from saelib.train import TrainConfig, train_sae

    assert train_sae is saelib.train_sae and TrainConfig is saelib.TrainConfig
    assert SyntheticActivations is saelib.SyntheticActivations
    assert callable(get_kernel("rectangle"))


def test_version_is_the_pyproject_version():
    declared = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert saelib.__version__ == declared


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch):
    import importlib.metadata as md

    def not_installed(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "version", not_installed)
    assert saelib._version() == saelib.__version__


def test_importing_saelib_needs_no_optional_dependency():
    code = ("import sys, saelib; heavy = [m for m in ('transformer_lens', 'sklearn', 'matplotlib', 'sae_lens') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_readme_quick_start_imports_from_the_package():
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Quick start")
    block = readme[start:].split("```python", 1)[1].split("```", 1)[0]
    imports = [line for line in block.splitlines() if line.startswith(("from saelib", "import saelib"))]
    assert imports and all(line.startswith("from saelib import ") for line in imports), imports
    for line in imports:
        for name in line.removeprefix("from saelib import ").split(","):
            assert hasattr(saelib, name.strip()), name


# ----------------------------------------------------------------------------- docs that exist

def _tracked_text_files():
    out = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    for name in out.stdout.splitlines():
        path = REPO / name
        if path.suffix in {".py", ".md", ".ipynb", ".toml", ".yml", ".yaml", ".sh", ".txt", ".json"} \
                and path.is_file():
            yield path


def test_no_reference_to_a_design_file_outside_the_repository():
    team_file = "DESIGN" + ".md"           # spelled in two parts so that this test does not match itself
    offenders = [str(p.relative_to(REPO)) for p in _tracked_text_files() if team_file in p.read_text("utf-8")]
    assert not offenders, f"these files cite {team_file}, which is not in the repository: {offenders}"


def test_design_document_sections_cited_exist() -> None:
    design = (REPO / "docs" / "design.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", design, re.M))
    cited: dict[str, set[str]] = {}
    for path in _tracked_text_files():
        for number in re.findall(r"docs/design\.md §(\d+)", path.read_text("utf-8")):
            cited.setdefault(number, set()).add(str(path.relative_to(REPO)))
    unknown = {n: sorted(files) for n, files in cited.items() if n not in sections}
    assert not unknown, f"docs/design.md has no section(s) {unknown}"


# ----------------------------------------------------------------------------- layers

LAYERS = ["models", "fast", "training", "data", "eval", "lab"]          # each imports only those before it
SHARED = {"validation", "files", "progress"}                            # small modules any layer may use


def test_imports_run_one_way():
    wrong = []
    for i, layer in enumerate(LAYERS):
        allowed = set(LAYERS[: i + 1]) | SHARED
        if layer == "lab":
            allowed |= {"io", "interop", "kernels", "metrics", "train", "synthetic"}
        for path in sorted((REPO / "saelib" / layer).rglob("*.py")):
            for name in re.findall(r"^\s*(?:from|import) saelib\.([a-z_]+)", path.read_text("utf-8"), re.M):
                if name not in allowed:
                    wrong.append(f"{path.relative_to(REPO)} imports saelib.{name}")
    assert not wrong, wrong
