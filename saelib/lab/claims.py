"""Self-checking claims: each notebook records its headline claims with the numbers it observed, and
run_all.sh assembles them into figures/CLAIMS.md. A claim that does not hold is reported as not holding.

    claims = Claims("04_shrinkage", scale)
    claims.add("Gated SAEs do not shrink", source="Gated paper, Table 1",
               expected="gamma within 0.05 of 1", observed=f"gamma = {g:.3f}", holds=abs(g - 1) < 0.05)
    claims.show()            # a table in the notebook; also saved to outputs/<scale>/claims/04_shrinkage.json

A claim that compares arms records how it was judged: `n_seeds`, the observed mean ± sd, the paper's own
figure (`paper`: a number or stated result with its table/figure reference) and the verdict `rule`.
`add_result` fills observed / holds / n_seeds / rule from a saelib.lab.pareto.judge result:

    result = judge(paired_at_equal_l0(gated_rows, relu_rows, "delta_lm_loss"), expect="lower")
    claims.add_result("Gated beats ReLU at equal L0", source="Gated paper §5.1",
                      paper="Fig. 1: ...", expected="lower delta LM loss at every compared L0", result=result)

    python -m saelib.lab.claims --scale default     # writes figures/CLAIMS.md (outputs/smoke/figures at smoke)
    python -m saelib.lab.claims --compare default long   # figures/CLAIMS_default_vs_long.md: verdicts side by side
"""
from __future__ import annotations

import argparse
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from saelib.files import atomic_write_json, atomic_write_text, read_json
from saelib.lab.paths import SCALES, figures_dir, output_dir
from saelib.validation import check_choice


@dataclass
class Claim:
    notebook: str
    claim: str
    source: str
    expected: str
    observed: str
    holds: bool
    n_seeds: int | None = None     # seeds behind each compared point (None: not a seeded comparison)
    paper: str = ""                # the paper's own figure: number or stated result, with table/figure
    rule: str = ""                 # the verdict rule (how "holds" was decided)
    figure: str = ""               # stem of the figure under figures/ that plots the claim's quantity ("": none)
    section: str = ""              # the notebook section that measures it, as numbered in its "## 4. ..." heading
    diagnosis: str = ""            # a claim that does not hold: where it stands against the noise, what would settle it


class Claims:
    def __init__(self, notebook: str, scale: str):
        self.notebook, self.scale = notebook, scale
        self.path = output_dir(scale) / "claims" / f"{notebook}.json"
        self.items: list[Claim] = []

    def add(self, claim: str, source: str, expected: str, observed: str, holds: bool, *,
            n_seeds: int | None = None, paper: str = "", rule: str = "", figure: str = "",
            section: str = "", diagnosis: str = "") -> Claim:
        """Record one claim. `diagnosis` (kept only when the claim does not hold): what the run found against the
        noise and what would settle the claim; add_result writes it from the verdict (verdicts.diagnose)."""
        item = Claim(self.notebook, claim, source, expected, observed, bool(holds),
                     None if n_seeds is None else int(n_seeds), paper, rule, _stem(figure),
                     str(section).strip().lstrip("§").rstrip("."), "" if holds else str(diagnosis))
        self.items = [c for c in self.items if c.claim != claim] + [item]
        self.save()
        return item

    def add_result(self, claim: str, source: str, expected: str, result, *, paper: str = "", figure: str = "",
                   section: str = "") -> Claim:
        """add() from a saelib.lab.pareto.Result: its observed text, verdict, seed count, rule and diagnosis."""
        from saelib.lab.verdicts import diagnose

        return self.add(claim, source, expected, result.observed, result.holds, n_seeds=result.n_seeds,
                        paper=paper, rule=result.rule, figure=figure, section=section, diagnosis=diagnose(result))

    def save(self) -> Path:
        atomic_write_json(self.path, [asdict(c) for c in self.items], indent=1)
        return self.path

    def table(self) -> str:
        return markdown_table(self.items)

    def summary(self) -> str:
        """The verdicts as a markdown list, for a notebook's closing text (built from the recorded claims, so it
        always says what this run found)."""
        lines = []
        for c in self.items:
            verdict = "holds" if c.holds else "does not hold"
            seeds = f", {c.n_seeds} seeds" if c.n_seeds else ""
            lines.append(f"- **{verdict}**{seeds}: {c.claim}. Observed: {c.observed}"
                         + (f" Paper: {c.paper}." if c.paper else ""))
        held = sum(c.holds for c in self.items)
        return f"{held} of {len(self.items)} claims hold in this run:\n\n" + "\n".join(lines)

    def show_summary(self):
        try:
            from IPython.display import Markdown, display
            display(Markdown(self.summary()))
        except ImportError:  # pragma: no cover
            print(self.summary())

    def show(self):
        try:
            from IPython.display import Markdown, display
            display(Markdown(self.table()))
        except ImportError:  # pragma: no cover
            print(self.table())


def _stem(figure: str) -> str:
    """A figure's stem: "figures/03_l0_vs_l1.png" and "03_l0_vs_l1" both give "03_l0_vs_l1"."""
    figure = str(figure or "").strip()
    return Path(figure).stem if figure else ""


def where(c: Claim) -> str:
    """The compact "where" cell of the table: "§4, fig 03_l0_vs_l1" (notebook section, figure stem);
    scripts/build_site.py parses it back with parse_where to link the section and the figure."""
    parts = ([f"§{c.section}"] if c.section else []) + ([f"fig {c.figure}"] if c.figure else [])
    return ", ".join(parts) or "—"


WHERE = re.compile(r"(?:§(?P<section>[\w.]+))?\s*,?\s*(?:fig (?P<figure>[\w.-]+))?")


def parse_where(cell: str) -> tuple[str, str]:
    """(section, figure) from a "where" cell written by where(); ("", "") for "—"."""
    m = WHERE.fullmatch(cell.strip())
    return (m.group("section") or "", m.group("figure") or "") if m else ("", "")


def _row(cells: list) -> str:
    """One markdown table row; a pipe or newline inside a cell would break the table."""
    return "| " + " | ".join(str(x).replace("|", "/").replace("\n", " ") for x in cells) + " |"


def verdict(c: Claim) -> str:
    """The "holds" cell: yes, or a bold no."""
    return "yes" if c.holds else "**no**"


def markdown_table(items: list[Claim]) -> str:
    lines = ["| notebook | where | claim | source | paper's figure | expected | observed (mean ± sd) | seeds "
             "| verdict rule | holds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in items:
        lines.append(_row([c.notebook, where(c), c.claim, c.source, c.paper or "—", c.expected, c.observed,
                           "—" if c.n_seeds is None else c.n_seeds, c.rule or "—", verdict(c)]))
    return "\n".join(lines)


def load_claims(scale: str) -> list[Claim]:
    items = []
    for path in sorted((output_dir(scale) / "claims").glob("*.json")):
        items += [Claim(**{k: v for k, v in c.items() if k in Claim.__dataclass_fields__})
                  for c in read_json(path)]               # ValueError naming a damaged file
    return items


def failing_section(items: list[Claim], scale: str, other: list[Claim] | None = None,
                    other_scale: str = "long") -> str:
    """Markdown: each claim that does not hold, with what was tried (seeds, rule, and its verdict at
    `other_scale` when `other`, that scale's claims, is given) and its diagnosis (what the run found against the
    noise, what would settle it)."""
    failing = [c for c in items if not c.holds]
    if not failing:
        return ""
    at_other = {(c.notebook, c.claim): c for c in (other or [])}
    ran_other = {c.notebook for c in (other or [])}

    def verdict_there(c: Claim) -> str:
        if other is None:
            return ""
        o = at_other.get((c.notebook, c.claim))
        if o is not None:
            return f" At `{other_scale}`: " + ("holds (the longer budget settles it)." if o.holds else
                                               "does not hold either.")
        if c.notebook in ran_other:
            return f" Not made at `{other_scale}`."
        return f" {c.notebook} not run at `{other_scale}`."

    compared = f"CLAIMS_{scale}_vs_{other_scale}.md"
    lines = ["## Claims that do not hold: what was tried, what would settle them", "",
             "Every claim was measured with the one training protocol of the notebooks (each family's learning rate "
             "from the recorded sweep), at the seeds shown, and judged by its rule."
             + (f" Where the notebook was also run at the `{other_scale}` scale, that verdict is given too (side by "
                f"side: [`{compared}`]({compared}))." if other is not None else ""), ""]
    for c in failing:
        seeds = (f"{c.n_seeds} seeds" if c.n_seeds > 1 else "1 seed") if c.n_seeds else "no seeds (exact check)"
        lines.append(f"- **{c.notebook}**, {c.claim}. Tried: {seeds}; rule: {c.rule or '—'}.{verdict_there(c)} "
                     + (f"Found: {c.diagnosis.rstrip('.')}." if c.diagnosis
                        else "Found: the observed column of the table."))
    return "\n".join(lines) + "\n"


def assemble(scale: str) -> Path:
    """Write CLAIMS.md from every notebook's recorded claims, then the failing claims' section (at default, with
    their verdicts at `long` where outputs/long/claims has them)."""
    items = load_claims(scale)
    held = sum(c.holds for c in items)
    other_scale = "long"
    other = load_claims(other_scale) if scale == "default" and (output_dir(other_scale) / "claims").is_dir() else None
    text = (f"# Claims checked by the notebooks ({scale} scale)\n\n"
            f"Generated by `python -m saelib.lab.claims --scale {scale}` (run_all.sh does this). "
            f"{held} of {len(items)} claims hold on the embedded model; the others are reported as observed.\n\n"
            + markdown_table(items) + "\n\n" + failing_section(items, scale, other, other_scale))
    out = figures_dir(scale) / "CLAIMS.md"
    atomic_write_text(out, text)
    return out


def summary_table(items: list[Claim]) -> str:
    """The README's short results table: the count, then per notebook which claims hold and which do not."""
    held = sum(c.holds for c in items)
    lines = [f"{held} of {len(items)} claims hold. Per notebook (each claim's numbers, seeds and verdict rule are in "
             "the full table below and in [`figures/CLAIMS.md`](figures/CLAIMS.md), which ends with what each claim "
             "that does not hold tried and what would settle it):", "",
             "| notebook | holds | does not hold |", "|---|---|---|"]
    by_notebook: dict[str, list[Claim]] = {}
    for c in items:
        by_notebook.setdefault(c.notebook, []).append(c)
    for notebook, cs in by_notebook.items():
        lines.append(_row([f"`{notebook}` ({sum(c.holds for c in cs)} of {len(cs)})",
                           "; ".join(c.claim for c in cs if c.holds) or "—",
                           "; ".join(c.claim for c in cs if not c.holds) or "—"]))
    return "\n".join(lines)


def run_parameters(scale: str) -> dict[str, list[str]]:
    """Each notebook executed at `scale` -> the assignments papermill injected into it (the lines of its cell
    tagged "injected-parameters", e.g. 'scale = "long"'), read from outputs/<scale>/executed/."""
    out = {}
    for path in sorted((output_dir(scale) / "executed").glob("*.ipynb")):
        lines = []
        for cell in read_json(path).get("cells", []):
            if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
                source = "".join(cell.get("source", []))
                lines += [line.strip() for line in source.splitlines() if line.strip() and not line.startswith("#")]
        out[path.stem] = lines
    return out


def compare_scales(base: list[Claim], other: list[Claim], base_scale: str, other_scale: str) -> str:
    """A markdown table of the claims made at both scales (matched by notebook and claim text): each verdict, each
    observed text and seed count, and whether the verdict changed; then the claims made at one scale only (pass
    `base` restricted to the notebooks run at both scales)."""
    other_by_key = {(c.notebook, c.claim): c for c in other}
    both = [(c, other_by_key[(c.notebook, c.claim)]) for c in base if (c.notebook, c.claim) in other_by_key]
    changed = sum(a.holds != b.holds for a, b in both)
    lines = [f"{len(both)} claims made at both scales; the verdict differs for {changed} of them.", "",
             f"| notebook | claim | holds ({base_scale}) | holds ({other_scale}) | verdict changed | "
             f"observed ({base_scale}) | observed ({other_scale}) | seeds ({base_scale} / {other_scale}) |",
             "|---|---|---|---|---|---|---|---|"]
    for a, b in both:
        lines.append(_row([a.notebook, a.claim, verdict(a), verdict(b),
                           "**yes**" if a.holds != b.holds else "no", a.observed, b.observed,
                           f"{'—' if a.n_seeds is None else a.n_seeds} / {'—' if b.n_seeds is None else b.n_seeds}"]))
    base_keys = {(c.notebook, c.claim) for c in base}
    for scale, only in ((base_scale, [c for c in base if (c.notebook, c.claim) not in other_by_key]),
                        (other_scale, [c for c in other if (c.notebook, c.claim) not in base_keys])):
        if only:
            lines += ["", f"Made at {scale} only:", ""]
            lines += [f"- {c.notebook}: {c.claim} — {verdict(c)}" for c in only]
    return "\n".join(lines)


def frontier_moves(notebooks: list[str], base_scale: str, other_scale: str) -> str:
    """For each notebook that recorded its frontiers at both scales (saelib.lab.scale_frontiers): the figure
    of both and, per family, whether the frontier moved (markdown; "" when no notebook recorded them at both)."""
    from saelib.lab.scale_frontiers import compare_frontiers_across_scales

    parts = []
    for nb in notebooks:
        compared = compare_frontiers_across_scales(nb, base_scale, other_scale)
        if compared is None:
            continue
        figure, results = compared
        parts += [f"## Has the frontier stopped moving? {nb}", "",
                  f"Each family's {other_scale} frontier read against its {base_scale} frontier at equal L0 "
                  f"(`saelib.lab.scale_frontiers`); \"settled\" when the change is within 2 x the seed spread at "
                  f"every compared L0. Figure: [`{figure.name}`]({figure.name}).", "",
                  "| family | settled | observed |", "|---|---|---|"]
        parts += [_row([fam, "yes" if r.holds else "**no**", r.observed]) for fam, r in results]
        parts.append("")
    return "\n".join(parts + ["## Claims at both scales", "", ""]) if parts else ""


def assemble_comparison(base_scale: str, other_scale: str) -> Path:
    """Write CLAIMS_<base>_vs_<other>.md beside the base scale's CLAIMS.md (figures/ for default): the verdicts
    of the notebooks run at both scales, side by side, with the parameters each notebook ran with at `other_scale`
    (a partial run says so here)."""
    other = load_claims(other_scale)
    notebooks = sorted({c.notebook for c in other})
    base = [c for c in load_claims(base_scale) if c.notebook in notebooks]
    params = run_parameters(other_scale)
    ran = "\n".join(f"- `{nb}`: " + ("; ".join(f"`{line}`" for line in params.get(nb, []))
                                     or "its parameters cell as committed") for nb in notebooks)
    text = (f"# Claims at {base_scale} and {other_scale} scale, side by side\n\n"
            f"Generated by `python -m saelib.lab.claims --compare {base_scale} {other_scale}` from "
            f"outputs/{base_scale}/claims and outputs/{other_scale}/claims; only notebooks run at both scales are "
            f"compared. The notebooks run at {other_scale} scale, with the parameters they ran with:\n\n{ran}\n\n"
            + frontier_moves(notebooks, base_scale, other_scale)
            + compare_scales(base, other, base_scale, other_scale) + "\n")
    out = figures_dir(base_scale) / f"CLAIMS_{base_scale}_vs_{other_scale}.md"   # beside the base CLAIMS.md
    atomic_write_text(out, text)
    return out


README_START, README_END = "<!-- claims:start -->", "<!-- claims:end -->"
SUMMARY_START, SUMMARY_END = "<!-- claims-summary:start -->", "<!-- claims-summary:end -->"


def _replace_block(text: str, start: str, end: str, body: str) -> str | None:
    """text with the part between the markers start and end replaced by body; None when a marker is absent."""
    if start not in text or end not in text:
        return None
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"


def update_readme(readme: str | Path, scale: str) -> bool:
    """Replace the block between README_START and README_END in `readme` with the claims table, and the block
    between SUMMARY_START and SUMMARY_END (if present) with summary_table. Returns False (and changes nothing)
    when the table's markers are absent."""
    readme = Path(readme)
    items = load_claims(scale)
    text = _replace_block(readme.read_text(), README_START, README_END, markdown_table(items))
    if text is None:
        return False
    text = _replace_block(text, SUMMARY_START, SUMMARY_END, summary_table(items)) or text
    atomic_write_text(readme, text)
    return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="default")
    parser.add_argument("--readme", default=None, help="also refresh the claims block of this README")
    parser.add_argument("--compare", nargs=2, metavar=("BASE", "OTHER"), default=None,
                        help="write figures/CLAIMS_<BASE>_vs_<OTHER>.md (e.g. --compare default long) and stop")
    args = parser.parse_args()
    if args.compare:
        for scale in args.compare:
            check_choice("--compare", scale, SCALES)
        print(assemble_comparison(*args.compare))
        raise SystemExit(0)
    print(assemble(args.scale))
    if args.readme:
        update_readme(args.readme, args.scale)
