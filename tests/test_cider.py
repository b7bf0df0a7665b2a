"""The training reward: CIDEr-D with fixed corpus weights matches the toolkit's when the corpus is the same."""
import random

import pytest
from pycocoevalcap.cider.cider import Cider

from captioner.training.cider import CiderD

WORDS = "a the dog man woman child runs jumps sits on in grass water snow red blue ball street".split()


def corpus(seed: int, photos: int = 40):
    rng = random.Random(seed)
    sentence = lambda: [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]  # noqa: E731
    references = [[sentence() for _ in range(rng.randint(1, 5))] for _ in range(photos)]
    return references, [sentence() for _ in range(photos)]


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_toolkit_on_its_own_references(seed):
    references, hypotheses = corpus(seed)
    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
    mean, per_photo = Cider().compute_score(gts, res)
    ours = CiderD(references).scores(range(len(hypotheses)), hypotheses)
    assert ours == pytest.approx(per_photo, abs=1e-5)
    assert ours.mean() == pytest.approx(mean, abs=1e-5)


def test_rewards_what_the_references_say():
    references, _ = corpus(2)
    cider = CiderD(references)
    own = cider.score(0, references[0][0])
    assert own > cider.score(0, references[1][0])  # another photo's reference
    assert own > cider.score(0, references[0][0][:2])  # a fragment: short, and few n-grams
    assert cider.score(0, []) == 0.0


def test_weights_come_from_the_corpus_not_the_batch():
    """A word every photo's references use is worth nothing, however the scored batch is chosen."""
    references = [[["a", "dog", "runs"]], [["a", "cat", "sits"]], [["a", "man", "jumps"]]]
    cider = CiderD(references)
    assert cider.score(0, ["a"]) == 0.0
    assert cider.score(0, ["dog"]) > 0.0
    assert cider.scores([0], [["a", "dog", "runs"]])[0] == pytest.approx(cider.score(0, ["a", "dog", "runs"]))
