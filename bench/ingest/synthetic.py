"""More chunk bodies than the corpus has, made deterministically from its real ones (issue 20:
corpus dedup per chunk from 10k to 1M chunks, while the corpus gives ~100k at 256 tokens).

The real bodies come first, unchanged (their own near-duplicates included). Each later body is
either, with probability NEAR_SHARE, a near copy of a random earlier body (1 to 8 of its words
replaced: ~0.95 down to ~0.7 Jaccard on 5-word shingles, so the exact check decides both ways
and kept near-misses pile up in shared LSH buckets as they would in a real crawl), or else a
fresh body: a random real body with each word replaced with probability FRESH_SUBSTITUTION by
a word drawn from the corpus's word stream (so word frequencies stay the corpus's), and 1% of
those replacements a new word (vocabulary keeps growing with the corpus, as Heaps' law has it).

Derived bodies are comparable per chunk with real ones: shingling 10k-chunk slices in a
fresh process measured the same at the start of the real bodies and deep in the derived ones.
The 1M chunks have 476k distinct words (Heaps' law, the 1% new words included): a cache of
word hashes grew with them and its lookups missed the CPU caches more the larger it grew, so
shingling now hashes words in one vectorized pass with no cache (flat per chunk). Derived
bodies mix words from the whole corpus, so slightly more of them hold a non-ASCII word (6% of
the texts past 100k against 4% of the first 10k) and take the slower regex split.

What does grow with the corpus, in the real bodies as in the derived ones, is the share of
chunks that meet an earlier kept chunk in some LSH band (9% of the first 10k chunks, 30% of the
first 100k, 25% of 1M): a chunk's near-duplicates and near-misses are more likely to be in a
larger prefix of the shuffled corpus. Those chunks cost an exact check each unless a bound
rules them out; that is the work dedup exists to do, not an artefact of the generator.
"""

from __future__ import annotations

import operator

import numpy as np

NEAR_SHARE = 0.15
FRESH_SUBSTITUTION = 0.3
NEW_WORD_SHARE = 0.01
SEED = 20


def grow(bodies: list[str], count: int, seed: int = SEED) -> list[str]:
    """`count` bodies: `bodies` first, then derived ones (see the module docstring)."""
    if count <= len(bodies):
        return bodies[:count]
    rng = np.random.default_rng(seed)
    vocabulary: dict[str, int] = {}
    split = [[vocabulary.setdefault(w, len(vocabulary)) for w in body.split(" ")]
             for body in bodies]
    base = [np.array(ids, dtype=np.int64) for ids in split]
    stream = np.concatenate(base)
    words = list(vocabulary)
    texts = list(bodies)
    while len(texts) < count:
        if rng.random() < NEAR_SHARE:
            source = texts[int(rng.integers(len(texts)))].split(" ")
            for position in rng.integers(len(source), size=int(rng.integers(1, 9))).tolist():
                source[position] = words[int(stream[rng.integers(len(stream))])]
            texts.append(" ".join(source))
            continue
        ids = base[int(rng.integers(len(base)))].copy()
        replaced = np.flatnonzero(rng.random(len(ids)) < FRESH_SUBSTITUTION)
        ids[replaced] = stream[rng.integers(len(stream), size=len(replaced))]
        chosen = operator.itemgetter(*ids.tolist())(words) if len(ids) > 1 else (words[ids[0]],)
        text = list(chosen)
        for position in replaced[rng.random(len(replaced)) < NEW_WORD_SHARE].tolist():
            text[position] = f"{text[position]}{int(rng.integers(1_000_000)):x}"
        texts.append(" ".join(text))
    return texts
