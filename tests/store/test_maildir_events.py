"""maildir_events.fold_events against a model of the directories: whatever renames,
unlinks and deliveries others (and we) made, the fold says each message's name now."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.store._maildir.maildir_events import fold_events

BASES = ["1.M1P1.a", "2.M2P2.b", "3.M3P3.c"]
PLACES = [("new", None), ("cur", "2,"), ("cur", "2,S"), ("cur", "2,ST"), ("cur", "2,Fa")]


def name(base: str, place: tuple[str, str | None]) -> tuple[str, str]:
    sub, info = place
    return sub, base if info is None else f"{base}:{info}"


ops = st.lists(st.tuples(st.sampled_from(BASES), st.sampled_from(["put", "drop"]),
                         st.sampled_from(PLACES), st.booleans()), max_size=12)


@settings(max_examples=300, deadline=None)
@given(indexed=st.sets(st.sampled_from(BASES)), start=st.lists(st.sampled_from(PLACES),
       min_size=3, max_size=3), ops=ops)
def test_the_fold_ends_where_the_directories_are(indexed, start, ops):
    disk = {b: (p if b in indexed else None) for b, p in zip(BASES, start, strict=True)}
    index = {b: disk[b] for b in indexed}
    events = []
    for base, kind, place, ours in ops:
        now = disk[base]
        if kind == "drop":
            if now is not None:
                events.append((*name(base, now), False))
                disk[base] = None
        elif now != place:
            if now is not None:  # a rename: its two halves
                events.append((*name(base, now), False))
            events.append((*name(base, place), True))
            disk[base] = place
        if ours and base in index and disk[base] is not None:
            index[base] = disk[base]  # our own change: the index already shows it
    folded = fold_events(events, index.get)
    assert folded is not None
    assert sorted(folded.gone) == sorted(b for b in index if disk[b] is None)
    assert sorted(folded.moved) == sorted(
        (b, *name(b, disk[b])) for b in index if disk[b] is not None and disk[b] != index[b])
    assert sorted(folded.unknown) == sorted(
        name(b, disk[b]) for b in BASES if b not in index and disk[b] is not None)


def test_two_files_of_one_base_are_left_to_a_listing():
    base = BASES[0]
    events = [("cur", f"{base}:2,S", True)]  # a second link beside the indexed name
    assert fold_events(events, {base: ("cur", "2,")}.get) is None


def test_bases_being_linked_in_by_us_are_left_to_their_writer():
    base = BASES[1]
    folded = fold_events([("new", base, True)], {}.get, skip={base})
    assert folded is not None and not (folded.moved or folded.gone or folded.unknown)
