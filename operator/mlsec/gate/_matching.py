"""Assign approvers to requirement slots (bipartite matching), preferring earlier candidates."""

from __future__ import annotations

from collections.abc import Sequence


def greedy_matching(candidates: Sequence[frozenset[str]], slots: Sequence[str]) -> dict[int, int]:
    """Maximum matching of candidates (their roles) to slots (one role each).

    Kuhn's augmenting-path algorithm, taking candidates in the given order. An augmenting
    path never unmatches a candidate, and a candidate that cannot be added now cannot be added
    later, so this is the matroid greedy: the matched set is maximum *and* lexicographically
    best for the order. Ordering candidates by latest expiry therefore also maximises the
    earliest expiry among those counted. Returns candidate index -> slot index.
    """
    owner: dict[int, int] = {}  # slot -> candidate

    def augment(c: int, seen: set[int]) -> bool:
        for s, role in enumerate(slots):
            if s in seen or role not in candidates[c]:
                continue
            seen.add(s)
            if s not in owner or augment(owner[s], seen):
                owner[s] = c
                return True
        return False

    for c in range(len(candidates)):
        augment(c, set())
    return {c: s for s, c in owner.items()}
