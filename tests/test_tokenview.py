"""The token view and the other HTML pieces, built from steps recorded by the real sampler."""

from __future__ import annotations

import re
from html import unescape

import pytest

from playground import tokenview
from tests.test_figures import TEXTS, recorded_step


def three_steps(**knobs):
    return [recorded_step(u=u, position=i, **knobs)[0] for i, u in enumerate([0.1, 0.9, 0.3])]


def spans(html: str) -> list[str]:
    return re.findall(r"<span class='tok[^']*' data-step='\d+'[^>]*>.*?</span>", html, flags=re.S)


def test_every_step_is_one_clickable_span_numbered_in_order():
    html = tokenview.token_view_html(three_steps(), TEXTS)
    assert re.findall(r"data-step='(\d+)'", html) == ["0", "1", "2"]


def test_tokens_are_coloured_by_raw_probability_by_default():
    steps = three_steps(top_p=0.8)  # Paris raw 0.5 / final 0.625; London raw 0.3 / final 0.375
    html = tokenview.token_view_html(steps, TEXTS)
    assert "background:hsl(60,75%,82%)" in spans(html)[0]  # 120 * 0.5
    assert "background:hsl(36,75%,82%)" in spans(html)[1]  # 120 * 0.3


def test_final_probability_mode_colours_by_the_distribution_sampled_from():
    html = tokenview.token_view_html(three_steps(top_p=0.8), TEXTS, mode="final probability")
    assert "background:hsl(75,75%,82%)" in spans(html)[0]  # 120 * 0.625
    assert "background:hsl(45,75%,82%)" in spans(html)[1]  # 120 * 0.375


def test_entropy_mode_colours_by_the_raw_entropy():
    step = three_steps()[0]
    h = step["stages"][0]["entropy"]
    html = tokenview.token_view_html([step], TEXTS, mode="entropy")
    assert f"background:hsl({120 * (1 - h / tokenview.ENTROPY_FULL):.0f},75%,82%)" in html
    assert "entropy of the raw distribution" in html


def test_an_unknown_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="mode must be one of raw probability, final probability, entropy"):
        tokenview.token_view_html(three_steps(), TEXTS, mode="rainbow")


def test_hover_text_lists_the_alternatives_and_which_stage_removed_them():
    step = three_steps(top_p=0.8)[0]
    tip = unescape(re.search(r"data-tip='([^']*)'", tokenview.token_view_html([step], TEXTS)).group(1))
    lines = tip.splitlines()
    assert lines[0].startswith("'␣Paris'  raw p 0.500 · final p 0.625 · rank 1")
    assert lines[1] == "alternatives (raw → final):"
    assert lines[2].split() == ["▶", "␣Paris", "0.500", "→", "0.625"]
    assert lines[4].split() == ["␣Rome", "0.150", "→", "0.000", "(top-p)"]


def test_token_text_is_escaped_not_rendered_as_markup():
    step = dict(three_steps()[0], shown="<b>x</b>")
    html = tokenview.token_view_html([step], TEXTS)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_a_newline_token_gets_a_visible_glyph():
    step = dict(three_steps()[0], shown="\n")
    assert "ws" in spans(tokenview.token_view_html([step], TEXTS))[0]
    assert ">↵\n</span>" in tokenview.token_view_html([step], TEXTS)


def test_selected_marked_and_forced_steps_are_flagged():
    steps = three_steps()
    steps[2] = dict(steps[2], forced=True)
    s = spans(tokenview.token_view_html(steps, TEXTS, selected=0, mark=1))
    assert "tok sel" in s[0] and "diverge" in s[1] and "forced" in s[2]
    assert "sel" not in s[1] and "diverge" not in s[0]


def test_no_steps_shows_a_hint_instead_of_nothing():
    assert "Generate to see the completion" in tokenview.token_view_html([], {})


def test_completions_sit_side_by_side_with_finish_reason_and_token_count():
    comps = [
        {"steps": three_steps(), "text": "A cat", "finish_reason": "stop"},
        {"steps": three_steps()[:2], "text": "A <dog>", "finish_reason": None},
    ]
    html = tokenview.completions_html(comps, running=True)
    assert html.count("class='comp'") == 2
    assert "Completion 1 · stop · 3 tokens" in html
    assert "Completion 2 · generating… · 2 tokens" in html
    assert "A &lt;dog&gt;" in html


def test_alternatives_table_says_what_happened_to_each_token():
    step = three_steps(top_p=0.8)[0]
    rows = re.findall(r"<tr class='[^']*'>(.*?)</tr>", tokenview.alternatives_html(step, TEXTS))
    cells = [re.findall(r"<td>(.*?)</td>", r) for r in rows]
    assert cells[0] == ["<code>␣Paris</code>", "0", "0.500", "0.625", "<b>chosen</b>"]
    assert cells[1] == ["<code>␣London</code>", "1", "0.300", "0.375", "possible"]
    assert cells[2][-1] == "removed by top-p"
