"""CIDEr-D against a fixed corpus: the reward self-critical training optimises.

The COCO toolkit's CIDEr-D weighs each n-gram by its document frequency among
the references of the captions being scored. As a training reward the weights
must stay put from batch to batch, so here they come once from a whole corpus
(the training references), and each photo's reference vectors are computed once
up front. With the corpus equal to the scored photos' own references, the
scores are the toolkit's to rounding (tests/test_cider.py checks this).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

Sentence = Sequence[Hashable]  # words, or word ids
N = 4  # n-grams of 1 to 4 words
SIGMA = 6.0  # the length penalty's width, in words


def ngrams(sentence: Sentence) -> Counter:
    return Counter(tuple(sentence[i:i + n]) for n in range(1, N + 1) for i in range(len(sentence) - n + 1))


class CiderD:
    """CIDEr-D x 10 (the toolkit's scale: 1.0 is the score papers print as 100) with fixed n-gram weights.

    `references[p]` holds photo p's reference sentences; document frequencies
    count the photos whose references contain an n-gram.
    """

    def __init__(self, references: Sequence[Sequence[Sentence]]):
        counts = [[ngrams(r) for r in refs] for refs in references]
        self.df: Counter = Counter(g for refs in counts for g in set().union(*refs))
        self.log_photos = math.log(len(references))
        self.refs = [[self._vector(c) for c in refs] for refs in counts]

    def _vector(self, counts: Counter) -> tuple[list[dict], list[float], int]:
        """tf-idf weights per n-gram order, their norms, and the length CIDEr-D compares (bigram count)."""
        vec: list[dict] = [{} for _ in range(N)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (self.log_photos - math.log(max(1.0, self.df[gram])))
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
        return vec, norms, sum(counts[g] for g in vec[1])

    def score(self, photo: int, sentence: Sentence) -> float:
        vec, norms, length = self._vector(ngrams(sentence))
        total = 0.0
        for ref_vec, ref_norms, ref_length in self.refs[photo]:
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * SIGMA ** 2))
            for n in range(N):
                ref = ref_vec[n]
                overlap = sum(min(w, ref[g]) * ref[g] for g, w in vec[n].items() if g in ref)
                if norms[n] and ref_norms[n]:
                    overlap /= norms[n] * ref_norms[n]
                total += overlap * penalty
        return 10.0 * total / N / len(self.refs[photo])

    def scores(self, photos: Sequence[int], sentences: Sequence[Sentence]) -> np.ndarray:
        """The score of each sentence against the references of its photo."""
        return np.array([self.score(p, s) for p, s in zip(photos, sentences)], dtype=np.float32)
