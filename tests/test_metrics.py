"""Caption metrics (pycocoevalcap, needs Java), diversity and the evaluation report."""
from __future__ import annotations

import base64
import io
import json
import math
import shutil
from html.parser import HTMLParser

import pytest
from PIL import Image

from captioner.errors import CaptionerError
from captioner.evaluation import metrics
from captioner.evaluation.metrics import CaptionScorer, diversity, score_captions
from captioner.evaluation.report import write_report

CAPTIONS = {
    "p1": "a brown dog runs across the green grass",
    "p2": "two children play with a red ball on the beach",
    "p3": "a man in a blue jacket rides a bicycle down the street",
    "p4": "three women sit on a wooden bench near the lake",
    "p5": "a little girl in a pink dress climbs the stairs",
}
REFS = {k: [v] for k, v in CAPTIONS.items()}
# Each photo gets another photo's caption.
UNRELATED = {k: CAPTIONS[other] for k, other in zip(CAPTIONS, ["p2", "p3", "p4", "p5", "p1"])}

# BLEU-1 by hand: 7 of 9 predicted words are in the references (a dog on grass / two cats sleep),
# brevity penalty exp(1 - 13/9) since the predictions have 9 words, the references 13.
HAND_PRED = {"a": "a dog runs on the grass", "b": "two cats sleep"}
HAND_REFS = {"a": ["a dog is running on green grass"], "b": ["two cats sleep on a sofa"]}
HAND_BLEU1 = 100 * 7 / 9 * math.exp(1 - 13 / 9)


@pytest.fixture(scope="module")
def scorer():
    if shutil.which("java") is None:
        pytest.skip("METEOR and the PTB tokenizer need Java")
    with CaptionScorer() as s:
        yield s


@pytest.fixture(scope="module")
def scored(scorer):
    return {
        "identical": scorer.score(CAPTIONS, REFS),
        "unrelated": scorer.score(UNRELATED, REFS),
        "hand": scorer.score(HAND_PRED, HAND_REFS),
    }


def test_scores_have_every_metric_as_a_percentage(scored):
    for result in scored.values():
        assert list(result) == [*metrics.METRICS, "photos"]
        assert all(0.0 <= result[m] <= 1000.0 for m in metrics.METRICS)
    assert scored["identical"]["photos"] == 5
    assert scored["hand"]["photos"] == 2


def test_identical_predictions_score_far_above_unrelated_ones(scored):
    same, other = scored["identical"], scored["unrelated"]
    # The toolkit's smoothing constants keep an exact match a hair under 100.
    for n in range(1, 5):
        assert same[f"BLEU-{n}"] == pytest.approx(100.0, abs=1e-5)
    assert same["METEOR"] == pytest.approx(100.0, abs=1e-6)
    assert same["ROUGE-L"] == pytest.approx(100.0, abs=1e-6)
    # CIDEr-D is 10 x the mean n-gram cosine for an exact match: 1000 as a percentage.
    assert same["CIDEr"] == pytest.approx(1000.0, abs=1e-6)
    assert other["BLEU-1"] < 40 and other["BLEU-4"] < 1
    assert other["CIDEr"] < 50 and other["METEOR"] < 20 and other["ROUGE-L"] < 40
    for m in metrics.METRICS:
        assert same[m] > 2 * other[m]


def test_bleu1_is_unigram_precision_with_brevity_penalty(scored):
    assert HAND_BLEU1 == pytest.approx(49.87, abs=0.01)
    assert scored["hand"]["BLEU-1"] == pytest.approx(HAND_BLEU1, abs=1e-4)
    assert scored["hand"]["BLEU-4"] < scored["hand"]["BLEU-3"] < scored["hand"]["BLEU-2"] < HAND_BLEU1


def test_scoring_prints_nothing_and_odd_line_breaks_keep_captions_with_their_photo(scorer, scored, capfd):
    # \r and U+2028 are line breaks to Java: left in, they would shift every later caption to the wrong photo.
    odd = {k: v.replace(" ", "\r", 1).replace(" ", "\u2028", 1) for k, v in CAPTIONS.items()}
    odd_refs = {k: [v.replace(" ", "\n", 1) + "."] for k, v in CAPTIONS.items()}
    assert scorer.score(odd, odd_refs) == scored["identical"]
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_an_empty_prediction_scores_zero_without_hanging(scorer):
    result = scorer.score({"p1": "", "p2": CAPTIONS["p2"]}, {k: REFS[k] for k in ("p1", "p2")})
    assert 0 < result["BLEU-1"] < 100 and result["photos"] == 2


def test_different_photo_ids_are_a_clear_error():
    with pytest.raises(CaptionerError, match=r"different photos .*1 only in the predictions .*'extra'"):
        score_captions({**CAPTIONS, "extra": "a cat"}, REFS)
    with pytest.raises(CaptionerError, match=r"1 only in the references .*'p5'"):
        score_captions({k: v for k, v in CAPTIONS.items() if k != "p5"}, REFS)
    with pytest.raises(CaptionerError, match="no captions to score"):
        score_captions({}, {})
    with pytest.raises(CaptionerError, match="list of captions"):
        score_captions({"p1": "a dog"}, {"p1": "a dog"})


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(CaptionerError) as raised:
        score_captions(CAPTIONS, REFS)
    assert str(raised.value) == (
        "METEOR and the PTB tokenizer need Java: install a Java runtime "
        "(e.g. `apt-get install default-jre-headless`) and run again.")


def test_diversity_counts_on_a_hand_made_set():
    result = diversity({
        "1": "A dog runs.",
        "2": "a dog runs",          # the same caption once cleaned
        "3": "a dog dog runs on grass",
        "4": "Two cats",
    })
    assert result == {"distinct_captions": 0.75, "vocabulary": 7, "mean_length": 3.5,
                      "repeated_word": 0.25, "photos": 4}
    with pytest.raises(CaptionerError):
        diversity({})


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def test_report_writes_portable_html_and_round_tripping_json(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (640, 480), (200, 30, 30)).save(photos / "red.jpg")
    Image.new("RGBA", (100, 300), (0, 0, 255, 128)).save(photos / "blue.png")
    tricky = 'a <b>"dog"</b> & its \'ball\''
    samples = [
        {"path": photos / "red.jpg", "caption": tricky, "references": ["a dog <plays>", "a red photo"],
         "score": -4.25},
        {"path": str(photos / "blue.png"), "caption": "a blue square", "references": ["blue"]},
        {"path": str(photos / "gone.jpg"), "caption": "a missing photo", "references": ["x"], "score": -1.0},
        {"path": str(photos / "red.jpg"), "caption": "not shown", "references": ["y"]},
    ]
    scores = {"BLEU-1": 63.6, "BLEU-4": 20.9, "CIDEr": 78.9, "photos": 4}
    div = {"distinct_captions": 1.0, "vocabulary": 9, "mean_length": 3.0, "repeated_word": 0.0, "photos": 4}
    meta = {"model": "models/<merge>", "split": "test", "beam": 3, "date": "2025-01-02T03:04:05+00:00"}

    json_path, html_path = write_report(tmp_path / "out", scores=scores, diversity=div, samples=samples,
                                        meta=meta, max_samples=3)
    assert json_path == tmp_path / "out" / "report.json" and html_path == tmp_path / "out" / "report.html"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json"]

    page = html_path.read_text(encoding="utf-8")
    assert "&lt;b&gt;&quot;dog&quot;&lt;/b&gt; &amp; its &#x27;ball&#x27;" in page
    assert tricky not in page and "<plays>" not in page and "models/&lt;merge&gt;" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "63.6" in page and "test" in page and "-4.25" in page
    assert "not shown" not in page and "3 of 4 samples shown" in page
    parser = _Images()
    parser.feed(page)
    assert [img["alt"] for img in parser.images] == [tricky, "a blue square"]
    for img in parser.images:
        assert img["src"].startswith("data:image/jpeg;base64,")
        thumb = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        assert max(thumb.size) == 160
    assert 'aria-label="a missing photo"' in page  # the unreadable photo gets a labelled placeholder

    document = json.loads(json_path.read_text(encoding="utf-8"))
    expected_samples = [{**s, "path": str(s["path"])} for s in samples]
    assert document == {"meta": {**meta, "photos": 4}, "scores": scores, "diversity": div,
                        "samples": expected_samples}


def test_report_folder_that_cannot_be_made_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CaptionerError, match="Cannot create the report folder"):
        write_report(tmp_path / "file" / "out", scores={}, diversity={}, samples=[], meta={})


# Last on purpose: it closes the shared scorer (a later user would just restart METEOR, seconds slower).
def test_closing_ends_the_java_process(scorer, scored):
    process = scorer._meteor.meteor_p
    assert process.poll() is None
    scorer.close()
    assert process.returncode is not None  # ended and reaped: no zombie left behind
    scorer.close()  # twice is harmless
