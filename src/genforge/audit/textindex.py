"""A suffix array over the training text, for verbatim-overlap queries.

``SuffixIndex(text)`` sorts every suffix of ``text`` (Manber & Myers 1993, "Suffix arrays: a new
method for on-line string searches": prefix doubling, here with NumPy sorts, O(n log n) per
round and log2(longest repeat) rounds: about 2 s and 9 MB for Tiny Shakespeare's 1 MB).
``matching_statistics(query)`` gives, for each start position i of ``query``, the length of
the longest prefix of ``query[i:]`` found anywhere in the text (Chang & Lawler 1994): a
binary search over the sorted suffixes finds where ``query[i:]`` would sit, and the longest
match is with one of its two neighbours there. From that array: the longest verbatim overlap
(its maximum) and whether each character n-gram occurs in the text (ms[i] >= n).

Everything counts Unicode characters (code points), whatever the run's tokenizer.
"""

from __future__ import annotations

import numpy as np

from genforge import GenforgeError

# The most training characters one index holds: the sort needs ~10 int64 arrays of this length
# (~1.6 GB at 20M). Larger corpora are refused rather than audited in part: a partial index
# would pass copies of the unindexed text as novel.
MAX_INDEX_CHARS = 20_000_000


def suffix_array(text: str) -> np.ndarray:
    """Start offsets of the suffixes of ``text`` in lexicographic (code point) order: (n,) int64."""
    n = len(text)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    rank = np.unique(codes, return_inverse=True)[1].astype(np.int64)  # (n,) dense ranks of characters
    k = 1
    while True:
        second = np.full(n, -1, dtype=np.int64)  # rank of the suffix k further on; -1 = past the end
        if k < n:
            second[: n - k] = rank[k:]
        sa = np.lexsort((second, rank))  # sort by (rank, second): suffixes ordered by their first 2k chars
        r1, r2 = rank[sa], second[sa]
        new_group = np.empty(n, dtype=bool)
        new_group[0] = True
        new_group[1:] = (r1[1:] != r1[:-1]) | (r2[1:] != r2[:-1])
        ranks_sorted = np.cumsum(new_group) - 1
        rank = np.empty(n, dtype=np.int64)
        rank[sa] = ranks_sorted
        if ranks_sorted[-1] == n - 1 or k >= n:  # every suffix has its own rank: sorted
            return sa.astype(np.int64)
        k *= 2


def _common_prefix(a: str, b: str) -> int:
    """Length of the common prefix of ``a`` and ``b``, by binary search on slice equality
    (C-speed comparisons instead of a Python loop over characters)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class SuffixIndex:
    """The training text and its suffix array; queries are read-only and thread-safe."""

    def __init__(self, text: str):
        if len(text) > MAX_INDEX_CHARS:
            raise GenforgeError(f"the training text has {len(text):,} characters, more than the "
                                f"{MAX_INDEX_CHARS:,} the verbatim-overlap index holds; audit a smaller corpus")
        self.text = text
        self.sa = suffix_array(text)

    def __len__(self) -> int:
        return len(self.text)

    def longest_match_at(self, query: str) -> tuple[int, int]:
        """(length, text offset) of the longest prefix of ``query`` that occurs in the text."""
        text, sa, m = self.text, self.sa, len(query)
        if m == 0 or len(sa) == 0:
            return 0, -1
        lo, hi = 0, len(sa)
        while lo < hi:  # lower bound: the first suffix not smaller than query (compared on m chars)
            mid = (lo + hi) // 2
            if text[sa[mid]: sa[mid] + m] < query:
                lo = mid + 1
            else:
                hi = mid
        best, where = 0, -1
        for j in (lo - 1, lo):  # the longest common prefix is with a neighbour of the insertion point
            if 0 <= j < len(sa):
                p = int(sa[j])
                length = _common_prefix(query, text[p: p + m])
                if length > best:
                    best, where = length, p
        return best, where

    def matching_statistics(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """For each i: the length of the longest prefix of ``query[i:]`` in the text (m,) and a
        text offset where it occurs (m,) (-1 where the length is 0)."""
        lengths = np.zeros(len(query), dtype=np.int64)
        offsets = np.full(len(query), -1, dtype=np.int64)
        for i in range(len(query)):
            lengths[i], offsets[i] = self.longest_match_at(query[i:])
        return lengths, offsets

    def longest_overlap(self, query: str) -> dict:
        """The longest substring of ``query`` found verbatim in the text: its length, where it
        starts in the query and in the text, and the substring itself."""
        lengths, offsets = self.matching_statistics(query)
        if len(query) == 0:
            return {"length": 0, "query_offset": 0, "text_offset": -1, "overlap": ""}
        i = int(lengths.argmax())
        n = int(lengths[i])
        return {"length": n, "query_offset": i, "text_offset": int(offsets[i]), "overlap": query[i: i + n]}


def ngram_share(lengths: np.ndarray, n: int) -> tuple[int, int]:
    """(found, total) character ``n``-grams of a query whose matching statistics are ``lengths``:
    the n-gram starting at i occurs in the text exactly when lengths[i] >= n."""
    total = max(0, len(lengths) - n + 1)
    return int((lengths[:total] >= n).sum()), total
