"""Print the README's table of edits from saved evaluations: `python scripts/edit_table.py docs/edits`.

One line per (edit, concept): the concept's rate on held-out prompts unedited -> edited (efficacy
and generalization; for a fact its old and new values; for a character its mark and object), and
the largest change of any neighbour attribute, each with its 95% Wilson interval and n. Controls
(the same recipe at every layer, at a random layer) are shown where the evaluation ran them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from interventions.edit_eval import EDITED, UNEDITED, EditEvaluation


def _rate(evaluation: EditEvaluation, row, condition: str) -> str:
    found = row.interval(condition)
    return "–" if found is None else f"{100 * found.value:.0f}% [{100 * found.low:.0f}, {100 * found.high:.0f}]"


def lines(folder: Path) -> list[str]:
    """Markdown rows of one saved evaluation."""
    evaluation = EditEvaluation.load(folder)
    controls = [c for c in evaluation.conditions if c not in (UNEDITED, EDITED)]
    out = []
    for concept in evaluation.concepts:
        rows = [r for r in evaluation.rows if r.concept == concept.old]
        tracked = [r for r in rows if r.group != "specificity"]
        neighbours = [r for r in rows if r.group == "specificity"]
        shifts = [(abs(r.interval(EDITED).value - r.interval(UNEDITED).value), r) for r in neighbours
                  if r.interval(EDITED) and r.interval(UNEDITED)]
        worst = max(shifts, key=lambda s: s[0])[1] if shifts else None
        n = evaluation.settings["images_per_group"]
        cells = [f"{r.group}: {r.measure} {_rate(evaluation, r, UNEDITED)} → {_rate(evaluation, r, EDITED)}"
                 + "".join(f"; {c} {_rate(evaluation, r, c)}" for c in controls) for r in tracked]
        neighbour = (f"{worst.measure} {_rate(evaluation, worst, UNEDITED)} → {_rate(evaluation, worst, EDITED)}"
                     if worst else "–")
        out.append(f"| `{folder.name}` | {concept.old} → {concept.new} | {'<br>'.join(cells)} | {neighbour} | {n} |")
    return out


def main(root: Path) -> None:
    print("| edit | concept | held-out rate, unedited → edited [95% CI] | largest neighbour change | images/group |")
    print("|---|---|---|---|---|")
    for folder in sorted(p.parent for p in root.glob("*/result.json")):
        print("\n".join(lines(folder)))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/edits"))
