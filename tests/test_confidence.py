"""Caption confidence: the features it weighs, the regression, the file it lives in, and the words of doubt."""
import torch

from captioner.models import confidence
from captioner.models.search import Hypothesis


def hyp(tokens: list[int], logprob: float) -> Hypothesis:
    return Hypothesis(tokens, logprob, logprob, None)


def test_centroids_are_unit_vectors_where_the_photos_are():
    g = torch.Generator().manual_seed(0)
    clusters = torch.randn(4, 16, generator=g)
    photos = (clusters.repeat_interleave(50, 0) + 0.05 * torch.randn(200, 16, generator=g)) * 3
    centres = confidence.centroids(photos, k=4)
    assert centres.shape == (4, 16) and torch.allclose(centres.norm(dim=1), torch.ones(4), atol=1e-5)
    nearest = torch.nn.functional.normalize(clusters, dim=1) @ centres.T
    assert (nearest.max(1).values > 0.99).all()  # every cluster has its centroid


def test_features_of_a_caption_its_tags_and_its_photo():
    beams = [[hyp([5, 6, 7], -2.0), hyp([5, 6, 8], -3.0), hyp([9], -4.0)]]
    probs = torch.zeros(1, 10)
    probs[0, [1, 2, 3]] = torch.tensor([0.6, 0.3, 0.1])
    word_ids = torch.tensor([-1, 6, 9, -1, -1, -1, -1, -1, -1, -1])  # class 1 -> word 6, class 2 -> word 9
    centres = torch.eye(4, 3)[:2]
    pooled = torch.tensor([[1.0, 1.0, 0.0]])
    x = confidence.features(beams, pooled, centres, probs, word_ids)
    row = dict(zip(confidence.FEATURES, x[0].tolist()))
    assert row["logprob"] == -0.5  # -2 over 3 words and <end>
    assert abs(row["tag"] - 0.6) < 1e-6 and abs(row["named"] - 0.6) < 1e-6 and abs(row["unnamed"] - 0.3) < 1e-6
    assert abs(row["familiar"] - 2 ** -0.5) < 1e-6
    assert abs(row["agree"] - (2 / 3 + 0) / 2) < 1e-6
    untagged = confidence.features(beams, pooled, centres, None, None)[0]
    assert untagged[1:4].tolist() == [0, 0, 0]


def test_the_regression_ranks_good_captions_above_bad_ones_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, len(confidence.FEATURES), generator=g)
    good = (x[:, 0] + 0.5 * x[:, 4] + 0.3 * torch.randn(400, generator=g)) > 0
    fitted = confidence.fit(x, good)
    p = fitted(x)
    assert ((p > 0.5) == good).float().mean() > 0.85
    assert fitted.weights[0] > 0 and fitted.weights[4] > 0
    centres = torch.nn.functional.normalize(torch.randn(8, 5, generator=g), dim=1)
    confidence.save(tmp_path, centres)
    assert confidence.load(tmp_path)[1] is None  # centroids only: not calibrated yet
    confidence.save(tmp_path, centres, fitted, {"dev": ["a"]})
    loaded_centres, loaded = confidence.load(tmp_path)
    assert torch.allclose(loaded_centres.float(), centres, atol=1e-3)
    assert torch.allclose(loaded(x), p, atol=1e-6) and loaded.plain == confidence.LOW
    fitted.plain = 0.71
    confidence.save(tmp_path, centres, fitted, {"dev": ["a"]})
    assert abs(confidence.load(tmp_path)[1].plain - 0.71) < 1e-6
    assert confidence.load(tmp_path / "nowhere") == (None, None)


def test_a_caption_says_its_doubt_at_three_levels():
    fitted = confidence.Confidence(torch.zeros(2), torch.zeros(()), torch.zeros(2), torch.ones(2), plain=0.7)
    said = [confidence.say("a cat on a sofa", fitted.doubt(c)) for c in (0.9, 0.7, 0.6, 0.5, 0.2)]
    assert said == (["a cat on a sofa"] * 2 + ["probably a cat on a sofa"] * 2
                    + ["I am not sure; it may be a cat on a sofa"])
    older = confidence.Confidence(torch.zeros(2), torch.zeros(()), torch.zeros(2), torch.ones(2))  # no plain saved
    assert [older.doubt(c) for c in (0.6, 0.5, 0.4)] == [0, 0, 2]  # plain or unsure, as models said before levels


def test_captions_are_said_plainly_from_where_every_dev_set_agrees_often_enough():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(400, generator=g)
    good = torch.rand(400, generator=g) < p  # the likelier, the better: a calibrated confidence
    plain = confidence.choose_plain([(p, good)])
    above = p >= plain
    assert good[above].float().mean() >= confidence.AGREE and above.sum() >= confidence.MIN_PLAIN
    lower = p >= plain - 0.05  # a threshold further down lets in too many bad captions
    assert good[lower].float().mean() < confidence.AGREE + 0.02
    worse = (p, torch.rand(400, generator=g) < p * 0.9)  # a dev set of weaker captions needs more confidence
    assert confidence.choose_plain([(p, good), worse]) >= confidence.choose_plain([worse]) >= plain
    assert confidence.choose_plain([(p, torch.zeros(400, dtype=torch.bool))]) == float(p.max())  # never agrees
    assert confidence.choose_plain([(p * 0.4 + 0.3, torch.ones(400, dtype=torch.bool))]) == confidence.LOW  # all good
