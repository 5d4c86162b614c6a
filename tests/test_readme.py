"""The README stays true to the code it describes."""

from scripts.knob_table import in_readme, table


def test_readme_lists_every_knob_as_the_registry_defines_it():
    assert in_readme() == table(), "run: .venv/bin/python scripts/knob_table.py --write"
