"""What a committed notebook concludes must agree with figures/CLAIMS.md.

Every notebook that prints `claims.show_summary()` ("N of M claims hold in this run:" and one "- **holds**: ..." /
"- **does not hold**: ..." line per claim) must list the same claims with the same verdicts as CLAIMS.md's rows for
that notebook, and its counts must match them; no markdown cell may state a verdict or a count that contradicts
them (a hand-typed "3 of 4 claims hold" or "**holds**: <claim>"). Nothing here depends on a particular run's numbers:
any consistent run (notebooks executed, then `python -m saelib.lab.claims --scale default`) passes, and a notebook
whose summary disagrees with CLAIMS.md fails (tested below on a doctored copy)."""
from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CLAIMS_MD = ROOT / "figures" / "CLAIMS.md"

COUNT = re.compile(r"(\d+) of (\d+) claims? holds? in this run")
VERDICT = re.compile(r"^\s*- \*\*(holds|does not hold)\*\*(?:, \d+ seeds?)?: (.*?)\. Observed: ", re.M)


def _norm(text: str) -> str:
    """A claim's text as CLAIMS.md writes it (no pipes, no newlines), whitespace collapsed."""
    return " ".join(str(text).replace("|", "/").replace("\n", " ").split())


def claims_md_rows(text: str) -> dict[str, list[tuple[str, bool]]]:
    """notebook -> [(claim, holds)] from CLAIMS.md's table (columns found by their header names)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    nb_col, claim_col, holds_col = header.index("notebook"), header.index("claim"), header.index("holds")
    out: dict[str, list[tuple[str, bool]]] = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header):
            raise ValueError(f"CLAIMS.md row with {len(cells)} cells, header has {len(header)}: {line[:120]}")
        out.setdefault(cells[nb_col], []).append((_norm(cells[claim_col]), cells[holds_col] == "yes"))
    return out


def _text(out: dict) -> str:
    if out.get("output_type") == "stream":
        return "".join(out.get("text", ""))
    data = out.get("data", {})
    return "".join(data.get("text/markdown", "") or data.get("text/plain", ""))


def printed_summaries(nb: dict) -> list[str]:
    """The text of every claims summary printed by the notebook's code cells."""
    return [t for cell in nb["cells"] if cell["cell_type"] == "code" for out in cell.get("outputs", [])
            if COUNT.search(t := _text(out))]


def parse_summary(text: str) -> tuple[tuple[int, int], list[tuple[str, bool]]]:
    match = COUNT.search(text)
    assert match is not None, "no 'N of M claims hold' line in the summary"
    held, total = map(int, match.groups())
    return (held, total), [(_norm(claim), verdict == "holds") for verdict, claim in VERDICT.findall(text)]


def problems(nb: dict, name: str, rows: dict[str, list[tuple[str, bool]]]) -> list[str]:
    """Every disagreement between the notebook `nb` (named `name`) and CLAIMS.md's `rows`."""
    expected = rows.get(name, [])
    held = sum(h for _, h in expected)
    found = []
    for text in printed_summaries(nb):
        (n_held, n_total), verdicts = parse_summary(text)
        if (n_held, n_total) != (held, len(expected)):
            found.append(f"summary says {n_held} of {n_total} claims hold; CLAIMS.md has {held} of {len(expected)}")
        if len(verdicts) != n_total:
            found.append(f"summary lists {len(verdicts)} verdicts under a count of {n_total}")
        if Counter(verdicts) != Counter(expected):
            diff = sorted(set(verdicts) ^ set(expected))
            found.append("summary verdicts differ from CLAIMS.md: " + "; ".join(
                f"{'holds' if h else 'does not hold'}: {c[:90]}" for c, h in diff[:4]))
    by_claim = dict(expected)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        for m in COUNT.finditer(text):
            if (int(m.group(1)), int(m.group(2))) != (held, len(expected)):
                found.append(f"markdown cell {i} types '{m.group(0)}'; CLAIMS.md has {held} of {len(expected)}")
        for verdict, claim in VERDICT.findall(text):
            claim = _norm(claim)
            if claim in by_claim and by_claim[claim] != (verdict == "holds"):
                found.append(f"markdown cell {i} says '{verdict}' for '{claim[:80]}', CLAIMS.md disagrees")
    return found


@pytest.fixture(scope="module")
def rows():
    if not CLAIMS_MD.exists():
        pytest.skip("figures/CLAIMS.md not generated")
    return claims_md_rows(CLAIMS_MD.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_conclusions_agree_with_claims_md(path, rows):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert problems(nb, path.stem, rows) == []


def _summary_notebook():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        if printed_summaries(nb):
            return path, nb
    pytest.skip("no committed notebook prints a claims summary")


def _summary_output(nb):
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if COUNT.search(_text(out)):
                return out
    raise AssertionError("no summary output")


def test_a_doctored_summary_fails(rows):
    path, nb = _summary_notebook()
    assert problems(nb, path.stem, rows) == []          # the committed one agrees (also tested above)
    flipped = copy.deepcopy(nb)
    out = _summary_output(flipped)
    key = "text/markdown" if "text/markdown" in out.get("data", {}) else None
    text = "".join(out["data"][key]) if key else "".join(out["text"])
    if "- **holds**" in text:
        doctored = text.replace("- **holds**", "- **does not hold**", 1)
    else:
        doctored = text.replace("- **does not hold**", "- **holds**", 1)
    if key:
        out["data"][key] = doctored
    else:
        out["text"] = doctored
    found = problems(flipped, path.stem, rows)
    assert any("verdicts differ" in p for p in found), found
    # a wrong count alone is caught too
    recount = copy.deepcopy(nb)
    out = _summary_output(recount)
    text = "".join(out["data"]["text/markdown"]) if key else "".join(out["text"])
    (held, total), _ = parse_summary(text)
    wrong = COUNT.sub(f"{(held + 1) % (total + 1)} of {total} claims hold in this run", text, count=1)
    if key:
        out["data"][key] = wrong
    else:
        out["text"] = wrong
    assert any("summary says" in p for p in problems(recount, path.stem, rows))


def test_a_hand_typed_verdict_that_contradicts_fails(rows):
    path, nb = _summary_notebook()
    claim, holds = rows[path.stem][0]
    typed = copy.deepcopy(nb)
    typed["cells"].append({"cell_type": "markdown", "id": "typed", "metadata": {}, "source": [
        f"{len(rows[path.stem]) + 1} of {len(rows[path.stem]) + 1} claims hold in this run:\n\n",
        f"- **{'does not hold' if holds else 'holds'}**: {claim}. Observed: typed by hand\n"]})
    found = problems(typed, path.stem, rows)
    assert any("markdown cell" in p and "types" in p for p in found), found
    assert any("markdown cell" in p and "says" in p for p in found), found


def test_claims_md_parser():
    text = ("| notebook | where | claim | holds |\n|---|---|---|---|\n"
            "| 01_a | §2 | A / B beats C | yes |\n| 01_a | — | D | **no** |\n")
    assert claims_md_rows(text) == {"01_a": [("A / B beats C", True), ("D", False)]}
    (held, total), verdicts = parse_summary("1 of 2 claims hold in this run:\n\n- **holds**, 3 seeds: A | B beats C. "
                                            "Observed: x\n- **does not hold**: D. Observed: y. Paper: z.")
    assert (held, total) == (1, 2) and verdicts == [("A / B beats C", True), ("D", False)]


def test_every_failing_claim_in_claims_md_says_what_was_tried_and_what_would_settle_it(rows):
    """figures/CLAIMS.md ends with one entry per claim that does not hold, each with its tries and a diagnosis
    written from the result (not the fallback that points back at the table)."""
    text = CLAIMS_MD.read_text(encoding="utf-8")
    failing = [(nb, c) for nb, claims in rows.items() for c, holds in claims if not holds]
    assert failing, "no failing claims: nothing to check"
    section = text[text.index("## Claims that do not hold"):]
    entries = [ln for ln in section.splitlines() if ln.startswith("- **")]
    assert len(entries) == len(failing)
    for (nb, claim), entry in zip(failing, entries, strict=True):
        assert entry.startswith(f"- **{nb}**, {claim}. Tried: "), entry[:200]
        assert "Found: the observed column" not in entry and "Would settle it" in entry, entry[:200]
