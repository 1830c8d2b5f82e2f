"""The prefix cache's pool: longest-prefix lookup, replacement of covered entries, LRU within bytes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.generation.prefix_cache import PrefixCache, past_nbytes

BYTES_PER_TOKEN = 2 * 4  # one key and one value float32 per token in these tests


def _past(tokens: list[int]) -> list[np.ndarray]:
    """A stand-in cache whose columns are the token ids themselves (keys and values)."""
    column = np.asarray(tokens, dtype=np.float32).reshape(1, 1, -1, 1)
    return [column.copy(), column.copy()]


def test_lookup_reuses_the_longest_shared_prefix_but_never_the_last_prompt_token():
    cache = PrefixCache(10**6, min_reuse_tokens=2)
    cache.add(list(range(10)), _past(list(range(10))))
    cache.add([0, 1, 2, 9, 9, 9], _past([0, 1, 2, 9, 9, 9]))
    past, length = cache.lookup([*range(6), 50])
    assert length == 6 and past[0][0, 0, :length, 0].tolist() == list(range(6))
    assert cache.lookup(list(range(10)))[1] == 9  # the whole prompt cached: its last token is recomputed
    assert cache.lookup([0, 7, 7]) is None  # below min_reuse_tokens
    assert cache.lookup([5, 6, 7]) is None
    assert (cache.lookups, cache.hits, cache.reused_tokens) == (4, 2, 15)


def test_a_longer_sequence_replaces_the_entries_it_covers_and_a_covered_one_is_not_added():
    cache = PrefixCache(10**6, min_reuse_tokens=2)
    cache.add([1, 2, 3, 4], _past([1, 2, 3, 4]))  # a prompt
    cache.add([1, 2, 3, 4, 5, 6], _past([1, 2, 3, 4, 5, 6]))  # its conversation, one turn on
    assert len(cache) == 1 and cache.bytes == 6 * BYTES_PER_TOKEN
    cache.add([1, 2, 3], _past([1, 2, 3]))  # already inside the entry
    assert len(cache) == 1 and not cache.wants([1, 2, 3, 4, 5], 5 * BYTES_PER_TOKEN)


def test_least_recently_used_entries_are_evicted_to_stay_within_the_pool():
    cache = PrefixCache(20 * BYTES_PER_TOKEN, min_reuse_tokens=2)
    a, b, c = [1] * 8, [2] * 8, [3] * 8
    cache.add(a, _past(a))
    cache.add(b, _past(b))
    cache.lookup([*a, 0])  # a is used: b is now the least recently used
    cache.add(c, _past(c))
    assert cache.lookup([*b, 0]) is None and cache.lookup([*a, 0]) is not None
    assert cache.bytes == 16 * BYTES_PER_TOKEN <= cache.capacity_bytes
    cache.add([4] * 30, _past([4] * 30))  # larger than the whole pool: not kept, nothing evicted
    assert len(cache) == 2
    cache.clear()
    assert (len(cache), cache.bytes) == (0, 0)


sequences = st.lists(st.integers(0, 3), min_size=0, max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(sequences, max_size=8), sequences, st.integers(8, 60))
def test_lookup_finds_the_true_longest_prefix_among_what_is_kept(added, prompt, capacity_tokens):
    cache = PrefixCache(capacity_tokens * BYTES_PER_TOKEN, min_reuse_tokens=1)
    for tokens in added:
        cache.add(tokens, _past(tokens))
        assert cache.bytes <= cache.capacity_bytes
        assert cache.bytes == sum(past_nbytes(e.past) for e in cache._entries.values())
    kept = [e.tokens.tolist() for e in cache._entries.values()]

    def shared(a: list[int]) -> int:
        n = 0
        while n < min(len(a), len(prompt)) and a[n] == prompt[n]:
            n += 1
        return n

    expected = min(max([shared(k) for k in kept], default=0), len(prompt) - 1)
    found = cache.lookup(prompt)
    if expected < 1:
        assert found is None
    else:
        past, length = found
        assert length == expected
        assert past[0][0, 0, :length, 0].tolist() == prompt[:length]  # the right entry's columns
