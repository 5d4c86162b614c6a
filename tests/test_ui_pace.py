"""How often a streaming page is updated: the pages streaming at once share a budget of updates a second,
and no page waits longer than the 0.5 s in which a visitor must see the text move."""

from __future__ import annotations

from playground.ui_runs import MAX_INTERVAL_S, UPDATES_PER_S, update_interval


def test_one_page_alone_is_updated_every_tenth_of_a_second():
    assert update_interval(1) == 0.1


def test_more_pages_at_once_are_each_updated_less_often():
    intervals = [update_interval(n) for n in range(1, 200)]
    assert intervals == sorted(intervals)
    assert update_interval(8) > update_interval(4) > update_interval(1)


def test_all_pages_together_stay_within_the_update_budget_until_the_longest_interval():
    for n in range(1, 200):
        if update_interval(n) < MAX_INTERVAL_S:
            assert n / update_interval(n) <= UPDATES_PER_S + 1e-9


def test_no_page_waits_half_a_second_for_an_update_however_many_stream():
    assert max(update_interval(n) for n in range(1, 10_000)) == MAX_INTERVAL_S < 0.5
