"""Build the static site (site/index.html) from the executed notebooks, the figures and the claims table.

    python scripts/build_site.py                  # the committed notebooks (executed at default scale)
    python scripts/build_site.py --notebooks outputs/smoke/executed --claims outputs/smoke/figures/CLAIMS.md \
        --figures outputs/smoke/figures --site /tmp/site       # a smoke run's notebooks instead
    python -m http.server -d site 8000            # then open http://localhost:8000

Needs the `site` extra (pip install -e ".[site]": mkdocs-material, mkdocs-jupyter, latex2mathml; selenium for
tests/test_site.py).
Steps: stage build/site_src/ (index.md with the reading order, claims.md with each claim linked to the notebook
section and the figure that measured it, the notebooks, figures/ and docs/*.md), build with mkdocs (mkdocs.yml,
strict) with the notebooks' math converted to MathML (no MathJax), remove the CDN loaders the template adds
(MathJax, mermaid), and fail if any page would still fetch anything from another host.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"

INTRO = """# saelib: Gated and JumpReLU sparse autoencoders, reproduced

A companion to DeepMind's *Improving Dictionary Learning with Gated Sparse Autoencoders* (Rajamanoharan et al.
2024) and *Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse Autoencoders* (2024). Each
notebook below is a lesson: the idea, the equations, the code, a measurement on a small language model that
runs on a laptop CPU, and what the numbers say. Every headline result is recorded as a **claim** with the
number the notebook observed, and checked on every run: see [the claims table](claims.md).

**New to sparse autoencoders?** Start with notebook 00: it has a short primer, the reading order and a
glossary of every metric used here (L0, FVU, ΔLM loss, loss recovered, dead and dense latents, γ).

## Reading order
"""


CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
MATH = re.compile(r"(?<!\\)\$\$(.+?)\$\$|(?<![\\$])\$(?!\s)([^$\n]+?)(?<!\s)\$", re.S)


def tex_to_mathml(markdown: str) -> str:
    """Every $...$ and $$...$$ outside code in a markdown cell, as MathML (rendered natively by the browser:
    no MathJax, no fonts or scripts to fetch). A formula latex2mathml cannot convert stays as TeX in code."""
    from latex2mathml.converter import convert

    def one(m: re.Match) -> str:
        tex, block = (m.group(1), True) if m.group(1) is not None else (m.group(2), False)
        try:
            mathml = convert(tex.strip(), display="block" if block else "inline")
        except Exception:                                   # noqa: BLE001 - any parser failure: show the TeX
            return f"`{tex}`"
        mathml = VARIANT.sub(_unicode_variant, mathml)
        return f"\n\n{mathml}\n\n" if block else mathml

    out, last = [], 0
    for code in CODE.finditer(markdown):
        out += [MATH.sub(one, markdown[last:code.start()]), code.group(0)]
        last = code.end()
    return "".join(out + [MATH.sub(one, markdown[last:])])


NOTEBOOK_LINK = re.compile(r"\]\((\d\d_[\w-]+)\.ipynb(#[^)]*)?\)")


# MathML Core (what Chromium renders) ignores mathvariant other than "normal": spell \mathbb and \mathcal
# letters with their Unicode mathematical alphanumerics instead.
_SPECIAL = {"double-struck": {"C": "ℂ", "H": "ℍ", "N": "ℕ", "P": "ℙ", "Q": "ℚ", "R": "ℝ", "Z": "ℤ"},
            "script": {"B": "ℬ", "E": "ℰ", "F": "ℱ", "H": "ℋ", "I": "ℐ", "L": "ℒ", "M": "ℳ", "R": "ℛ"}}
_BASE = {"double-struck": 0x1D538, "script": 0x1D49C}
VARIANT = re.compile(r'<mi mathvariant="(double-struck|script)">([A-Z])</mi>')


def _unicode_variant(m: re.Match) -> str:
    kind, letter = m.group(1), m.group(2)
    char = _SPECIAL[kind].get(letter) or chr(_BASE[kind] + ord(letter) - ord("A"))
    return f"<mi>{char}</mi>"


def copy_notebook(path: Path, dest: Path) -> None:
    """The notebook with its markdown math converted to MathML (tex_to_mathml) and its links to sibling
    notebooks ("01_standard_sae.ipynb") pointed at their pages ("../01_standard_sae/"); outputs untouched."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            text = NOTEBOOK_LINK.sub(lambda m: f"](../{m.group(1)}/{m.group(2) or ''})", "".join(cell["source"]))
            cell["source"] = tex_to_mathml(text)
    dest.write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")


def notebook_title(path: Path) -> tuple[str, str]:
    """(title, first sentence of the introduction) from a notebook's first markdown cell."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        lines = "".join(cell["source"]).strip().splitlines()
        title = next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("#")), path.stem)
        body = " ".join(ln.strip() for ln in lines if ln.strip() and not ln.startswith("#"))
        # the first sentence (not cut at "et al." or "e.g.")
        sentence_end = r"(?<!\bal\.)(?<!\be\.g\.)(?<!\bi\.e\.)(?<=[.!?])\s"
        first = re.split(sentence_end, body, maxsplit=1)[0] if body else ""
        return title, first
    return path.stem, ""


def parse_claims(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first markdown table in CLAIMS.md."""
    rows = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(rows) < 2:
        return [], []
    split = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    return split[0], [r for r in split[2:] if len(r) == len(split[0])]


SECTION_HEADING = re.compile(r"^#{2,4}\s+(\d+[a-z]?)\.\s")
WHERE = re.compile(r"(?:§(?P<section>[\w.]+))?\s*,?\s*(?:fig (?P<figure>[\w.-]+))?")


def heading_anchor(heading: str) -> str:
    """The id the rendered notebook page gives a markdown heading line: mkdocs-jupyter renders headings with
    nbconvert's mistune renderer, patched to slugify the heading's text ("## 4. $L_0$ versus $L_1$" ->
    "4-l0-versus-l1"); the math is MathML by then (copy_notebook), so it is rendered the same way here."""
    import mkdocs_jupyter.convert  # noqa: F401 - installs the lower-case heading ids
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    html = markdown2html_mistune(tex_to_mathml(heading.strip()))
    m = re.search(r"""\bid\s*=\s*["']([^"']+)["']""", html)
    return m.group(1) if m else ""


def section_anchors(path: Path) -> dict[str, str]:
    """{"4": "4-l0-versus-l1-and-gated-saes", "4b": ...}: the numbered headings of a notebook and their ids."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    anchors: dict[str, str] = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for line in "".join(cell["source"]).splitlines():
            m = SECTION_HEADING.match(line)
            if m and m.group(1) not in anchors:
                anchors[m.group(1)] = heading_anchor(line)
    return anchors


def parse_where(cell: str) -> tuple[str, str]:
    """(section, figure stem) from a claims table "where" cell ("§4, fig 03_l0_vs_l1"; see saelib.lab.claims)."""
    m = WHERE.fullmatch(cell.strip())
    return (m.group("section") or "", m.group("figure") or "") if m else ("", "")


def claims_page(claims_md: Path, notebooks: list[str], figures: list[str],
                anchors: dict[str, dict[str, str]] | None = None) -> str:
    """claims.md: the claims table, each claim linked to the notebook section that measured it and to the figure
    that plots its quantity (its "where" cell); a claim without them links the notebook and all its figures."""
    anchors = anchors or {}
    header, rows = parse_claims(claims_md.read_text(encoding="utf-8")) if claims_md.exists() else ([], [])
    head = ("---\nhide:\n  - toc\n---\n\n# Claims\n\n"
            "Every claim a notebook checks, with the number it observed on the last run "
            "(regenerated by `run_all.sh`). Each claim links to the notebook section that measured it and to the "
            "figure that plots the quantity it tests.\n\n")
    if not header or "notebook" not in header:
        return head + "_No claims table found (run `./run_all.sh` first)._\n"
    nb_col = header.index("notebook")
    where_col = header.index("where") if "where" in header else None
    held = sum(1 for r in rows if "holds" in header and r[header.index("holds")].strip("* ") == "yes")
    lines = [f"{held} of {len(rows)} claims hold.\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        name = r[nb_col]
        cells = list(r)
        section, figure = parse_where(r[where_col]) if where_col is not None else ("", "")
        page = f"notebooks/{name}.ipynb"
        cells[nb_col] = f"[{name}]({page})" if name in notebooks else name
        if section or figure:
            links = []
            anchor = anchors.get(name, {}).get(section, "")
            if section:
                links.append(f"[§{section}]({page}#{anchor})" if name in notebooks and anchor else f"§{section}")
            if figure:
                links.append(f"[fig: {figure}](figures/{figure}.png)" if f"{figure}.png" in figures
                             else f"fig: {figure}")
            cells[where_col] = "<br>".join(links)
        else:
            figs = [f for f in figures if f.startswith(name[:2] + "_")]
            cells[nb_col] += "".join(f"<br>[fig: {Path(f).stem[3:]}](figures/{f})" for f in figs)
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n" + failing_claims_section(claims_md.read_text(encoding="utf-8"))


FAILING_HEADING = "## Claims that do not hold"


def failing_claims_section(text: str) -> str:
    """CLAIMS.md's section on the claims that do not hold (what was tried, what would settle them), for the
    claims page; its links to other files under figures/ become plain names (the site does not carry them)."""
    if FAILING_HEADING not in text:
        return ""
    section = text[text.index(FAILING_HEADING):].split("\n## ", 1)[0]
    return "\n" + re.sub(r"\[`([^`\]]+)`\]\(([^)]+)\)", r"`figures/\1`", section).rstrip() + "\n"


def stage(src: Path, notebooks_dir: Path, figures_dir: Path, claims_md: Path) -> list[dict]:
    """Write build/site_src/ and return the navigation."""
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    (src / "figures").mkdir()
    (src / "assets").mkdir()
    (src / "assets" / "extra.css").write_text(".md-grid { max-width: 1500px; }\n", encoding="utf-8")
    notebooks = sorted(notebooks_dir.glob(NOTEBOOK_GLOB))
    if not notebooks:
        raise SystemExit(f"build_site: no executed notebooks ({NOTEBOOK_GLOB}) in {notebooks_dir}")
    figures = sorted(p.name for p in figures_dir.glob("*.png")) if figures_dir.exists() else []
    for f in figures:
        shutil.copy2(figures_dir / f, src / "figures" / f)
    nav_notebooks, order = [], [INTRO, "| notebook | what it does |", "|---|---|"]
    for path in notebooks:
        copy_notebook(path, src / "notebooks" / path.name)
        title, first = notebook_title(path)
        nav_notebooks.append({title: f"notebooks/{path.name}"})
        order.append(f"| [{title}](notebooks/{path.name}) | {first.replace('|', '/')} |")
    order += ["", "The design notes of the library (layers, public interface, protocol) are in "
              "[Design](design.md)." if (ROOT / "docs" / "design.md").exists() else "",
              "", "Every figure: [figures](figures.md).", ""]
    (src / "index.md").write_text("\n".join(order), encoding="utf-8")
    anchors = {p.stem: section_anchors(p) for p in notebooks}
    (src / "claims.md").write_text(claims_page(claims_md, [p.stem for p in notebooks], figures, anchors),
                                   encoding="utf-8")
    (src / "figures.md").write_text("# Figures\n\n" + "\n".join(
        f"## {Path(f).stem}\n\n![{Path(f).stem}](figures/{f})\n" for f in figures), encoding="utf-8")
    nav: list[dict] = [{"Start": "index.md"}, {"Claims": "claims.md"}, {"Notebooks": nav_notebooks},
                       {"Figures": "figures.md"}]
    docs = sorted((ROOT / "docs").glob("*.md")) if (ROOT / "docs").exists() else []
    for doc in docs:
        shutil.copy2(doc, src / doc.name)
        nav.append({doc.stem.replace("_", " ").capitalize(): doc.name})
    return nav


# A page "fetches" what it loads by itself: scripts, stylesheets, images, frames, fonts, CSS imports.
FETCH = re.compile(r"""(?:<(?:script|img|iframe|source|audio|video)\b[^>]*\bsrc|<link\b[^>]*\bhref)\s*=\s*["']"""
                   r"""(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import\s+["'](?:https?:)?//|import\(\s*["']https?://""",
                   re.I)
# Math is MathML by the time nbconvert sees it (tex_to_mathml), so the MathJax loader the template adds goes.
MATHJAX = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
MERMAID = re.compile(r'<script type="module">\s*document\.addEventListener\("DOMContentLoaded".*?mermaid.*?</script>',
                     re.S)


def external_fetches(site: Path) -> list[str]:
    """Places in the built site (HTML, CSS, JS we wrote or the tools wrote) that would load from another host."""
    found = []
    for path in site.rglob("*"):
        if path.suffix not in (".html", ".css"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in FETCH.finditer(text):
            found.append(f"{path.relative_to(site)}: {text[m.start():m.end() + 60]!r}")
    return found


def build(notebooks_dir: Path, figures_dir: Path, claims_md: Path, site: Path, quiet: bool = True) -> Path:
    build_dir = ROOT / "build"
    src = build_dir / "site_src"
    nav = stage(src, notebooks_dir, figures_dir, claims_md)
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    config.update(docs_dir=str(src), site_dir=str(site), nav=nav, extra_css=["assets/extra.css"])
    generated = build_dir / "mkdocs.generated.yml"
    generated.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    cmd = [sys.executable, "-m", "mkdocs", "build", "-f", str(generated), "--clean"] + (["-q"] if quiet else [])
    subprocess.run(cmd, check=True, cwd=ROOT)
    for page in site.rglob("*.html"):                        # no page here has a mermaid diagram or MathJax
        text = page.read_text(encoding="utf-8")
        cleaned = MATHJAX.sub("", MERMAID.sub("", text))
        if cleaned != text:
            page.write_text(cleaned, encoding="utf-8")
    fetches = external_fetches(site)
    if fetches:
        raise SystemExit("build_site: pages would fetch from other hosts:\n  " + "\n  ".join(fetches[:20]))
    return site / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help="executed notebooks")
    parser.add_argument("--figures", type=Path, default=ROOT / "figures")
    parser.add_argument("--claims", type=Path, default=ROOT / "figures" / "CLAIMS.md")
    parser.add_argument("--site", type=Path, default=ROOT / "site", help="output folder")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    index = build(args.notebooks.resolve(), args.figures.resolve(), args.claims.resolve(), args.site.resolve(),
                  quiet=not args.verbose)
    print(f"site: {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
