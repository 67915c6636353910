"""Round bookkeeping: ids from time, draft continuation by content, the book keyed by round id."""

from __future__ import annotations

import pytest

from cascade_sd_ros.core.rounds import (
    STAGE_NONE,
    Draft,
    RoundBook,
    continuation,
    round_id_for,
    round_times_between,
)


def test_a_stamp_from_the_far_future_opens_a_few_rounds_not_millions() -> None:
    now, period = 1_767_225_600 * 10**9, 2 * 10**9
    far = (2**31 - 1) * 10**9  # a stamp at the end of int32 seconds: 185 million periods ahead
    got = round_times_between(now, far, period)
    assert len(got) == 8 and got[-1] == (far // period) * period
    assert got == list(range(got[0], got[-1] + 1, period))
    assert round_times_between(20, 200, 10, limit=3) == [180, 190, 200]
    with pytest.raises(ValueError, match="limit"):
        round_times_between(20, 200, 10, limit=0)


def test_round_times_between_period_boundaries() -> None:
    assert round_times_between(None, 25, 10) == [20]
    assert round_times_between(20, 55, 10) == [30, 40, 50]
    assert round_times_between(50, 55, 10) == []
    assert round_times_between(None, 5, 10) == []
    with pytest.raises(ValueError):
        round_times_between(None, 5, 0)
    assert round_id_for(123) == 123
    with pytest.raises(ValueError):
        round_id_for(-1)


@pytest.mark.parametrize(
    ("committed", "start", "tokens", "want"),
    [
        ([], 0, [5, 6], [5, 6]),
        ([5], 0, [5, 6, 7], [6, 7]),  # drafted before the last commit, still agrees
        ([5, 9], 0, [5, 6, 7], []),  # the commit disagreed: stale
        ([5, 6, 7], 0, [5, 6, 7], []),  # nothing beyond the commit
        ([5], 2, [8], []),  # drafted past tokens nobody committed
        ([5, 6], 1, [6, 7], [7]),
    ],
)
def test_continuation(committed: list[int], start: int, tokens: list[int], want: list[int]) -> None:
    assert continuation(committed, start, tokens) == want


def test_book_commit_best_draft_and_upstream_view() -> None:
    book = RoundBook(capacity=2)
    rec = book.open(7, 700)
    assert book.open(7, 700) is rec
    with pytest.raises(ValueError, match="already open"):
        book.open(7, 701)
    book.add_draft(7, 700, Draft(stage=0, commit_seq=0, start_position=0, token_ids=(1, 2, 3)))
    book.add_draft(7, 700, Draft(stage=1, commit_seq=0, start_position=0, token_ids=(1, 2)))
    d, tail = book.best_draft(7, [1, 0])
    assert d.stage == 1 and tail == [1, 2]
    book.commit(7, [1, 4], stage=1, drafted=2, accepted=1, final=False)
    assert rec.committed == [1, 4] and rec.commit_seq == 1 and rec.accepted == [0, 1, 0]  # drafter, refiner, draft head
    assert book.best_draft(7, [1, 0]) is None  # both drafts went stale with the correction
    book.commit(7, [9], stage=STAGE_NONE, drafted=0, accepted=0, final=True)
    assert rec.final and rec.target_forwards == 2
    with pytest.raises(ValueError, match="final"):
        book.commit(7, [1], stage=STAGE_NONE, drafted=0, accepted=0, final=False)
    # bounded: the oldest round goes first
    book.open(8, 800)
    book.open(9, 900)
    assert 7 not in book and book.evicted == 1
    with pytest.raises(KeyError):
        book.commit(7, [1], stage=STAGE_NONE, drafted=0, accepted=0, final=False)


def test_upstream_apply_commit_rolls_speculation_back_only_on_disagreement() -> None:
    book = RoundBook()
    rec = book.open(1, 100)
    rec.extend_spec([], [3, 4, 5])
    assert book.apply_commit(1, 100, 1, [3, 4], False) and rec.spec == [3, 4, 5]
    assert not book.apply_commit(1, 100, 1, [3, 4], False)  # repeated: not news
    assert book.apply_commit(1, 100, 2, [3, 4, 9], False) and rec.spec == [3, 4, 9]
    assert rec.extend_spec([3, 4, 9], [1]) and rec.spec == [3, 4, 9, 1]
    assert not rec.extend_spec([3, 4, 8], [1])  # built on a prefix that lost
    assert book.apply_commit(1, 100, 2, [3, 4, 9], True) and rec.final  # the same commit, now final


def test_focus_skips_rounds_the_verifier_moved_past_and_reset_voids_all() -> None:
    book = RoundBook()
    book.open(1, 100)
    book.open(2, 200)
    book.open(3, 300)
    assert book.focus().round_id == 1
    book.apply_commit(2, 200, 1, [5], False)
    assert book.focus().round_id == 2 and book.get(1).abandoned
    book.apply_commit(2, 200, 2, [5, 6], True)
    assert book.focus().round_id == 3
    book.reset()
    assert len(book) == 0 and book.focus() is None and book.resets == 1


def test_a_stages_look_ahead_drafts_are_chained_into_one_draft() -> None:
    """A drafter that ran ahead in two drafts of 3 is checked as one draft of 6 (one verify forward);
    a draft of another speculation does not join the chain, and the chain stops where drafts do."""
    book = RoundBook()
    book.open(3, 300)
    book.add_draft(
        3,
        300,
        Draft(stage=0, commit_seq=0, start_position=0, token_ids=(1, 2, 3), confidence=(0.9, 0.8, 0.7), compute_ms=1.0),
    )
    book.add_draft(
        3,
        300,
        Draft(stage=0, commit_seq=0, start_position=3, token_ids=(4, 5, 6), confidence=(0.6, 0.5, 0.4), compute_ms=2.0),
    )
    book.add_draft(3, 300, Draft(stage=0, commit_seq=0, start_position=3, token_ids=(7,)))  # shorter: not chosen
    book.add_draft(3, 300, Draft(stage=0, commit_seq=0, start_position=9, token_ids=(8,)))  # leaves a gap: never joins
    d, tail = book.best_draft(3, [1, 0])
    assert tail == [1, 2, 3, 4, 5, 6] and list(d.token_ids) == tail and d.start_position == 0
    assert d.confidence == (0.9, 0.8, 0.7, 0.6, 0.5, 0.4) and d.compute_ms == 3.0 and d.stage == 0
    # after a commit of [1, 2], the chain continues from the part still ahead of it
    book.commit(3, [1, 2], stage=0, drafted=3, accepted=2, final=False)
    d, tail = book.best_draft(3, [0])
    assert tail == [3, 4, 5, 6] and d.confidence == (0.7, 0.6, 0.5, 0.4)
    # a correction that disagrees with both drafts leaves nothing to chain
    book.commit(3, [9, 9], stage=STAGE_NONE, drafted=0, accepted=0, final=False)
    assert book.best_draft(3, [0]) is None
