"""The README's table of knobs, made from engine/knobs.py, the one source of truth.

    .venv/bin/python scripts/knob_table.py           # print it
    .venv/bin/python scripts/knob_table.py --write   # put it into README.md between its markers
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


README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- KNOB-TABLE:START -->", "<!-- KNOB-TABLE:END -->"


def in_readme() -> str:
    text = README.read_text()
    return text[text.index(START) + len(START) : text.index(END)].strip()


def write() -> None:
    text = README.read_text()
    head, rest = text.split(START, 1)
    README.write_text(head + START + "\n" + table() + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    write() if "--write" in sys.argv else print(table())
