"""Print the README's table of knobs from engine/knobs.py, the one source of truth.

    .venv/bin/python scripts/knob_table.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.knobs import KNOBS, REQUEST_KNOBS  # noqa: E402


def table() -> str:
    rows = ["| knob | range | default (off) | OpenAI | what it does |", "|---|---|---|---|---|"]
    for k in [*KNOBS.values(), *REQUEST_KNOBS.values()]:
        default = "—" if k.default is None else ("default order" if k.kind == "order" else f"`{k.default}`")
        rng = k.range_text() or "—"
        rows.append(f"| `{k.name}` | {rng} | {default} | {'yes' if k.openai else 'extension'} | {k.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
