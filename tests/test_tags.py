"""Tags: the encoder's ImageNet classes, the caption word learned for each, and the guide they give the search."""
import torch

from captioner.data.images import load_photo, to_pixels
from captioner.data.text import SPECIALS, Vocab
from captioner.models import tags
from captioner.models.tags import Tagger, class_names, class_words, name_word

EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples"


def vocab(*words: str) -> Vocab:
    return Vocab([*SPECIALS, *words])


def test_the_classes_are_imagenets_in_the_classifiers_order():
    names = class_names()
    assert len(names) == 1000
    assert names[0][0] == "tench" and names[281][0] == "tabby" and names[285][0] == "Egyptian cat"
    assert names[967][0] == "espresso" and names[999][0] == "toilet tissue"


def test_a_class_name_gives_its_last_word_the_vocabulary_holds():
    assert name_word(["bald eagle", "American eagle"], vocab("eagle")) == "eagle"
    assert name_word(["tabby", "tabby cat"], vocab("cat")) == "cat"
    assert name_word(["tabby", "tabby cat"], vocab("dog")) == ""


def test_class_words_are_learned_from_the_captions_of_the_photos_each_class_finds():
    """Photos of class 0 are captioned with "cat", of class 1 with "dog", of class 4 with "man"; class 2 is
    never seen (its name decides), class 3's photos use "cat" and "dog" no more than others do."""
    words = vocab("a", "cat", "dog", "man", "sits", "runs", "tench", "tabby")
    probs = torch.zeros(280, 1000)
    probs[:30, 0], probs[30:60, 1], probs[60:80, 3], probs[80:, 4] = 0.9, 0.9, 0.9, 0.9
    references = ([["a cat sits"] * 2] * 30 + [["a dog runs", "a dog sits"]] * 30
                  + [["a cat runs", "a man sits", "a dog sits", "a man runs"]] * 20 + [["a man sits"]] * 200)
    learned = class_words(probs, references, words)
    assert learned[0] == "cat" and learned[1] == "dog"
    assert learned[4] == ""  # "man" is in most captions of all photos: too little lift to name a class
    assert learned[2] == ""  # "great white shark": no word of its names in the vocabulary, no photos
    assert learned[3] == ""  # "tiger shark" photos: "cat" and "dog" as often as anywhere
    assert learned[281] == "tabby"  # never seen: its name's word
    assert learned[0] != "a"  # in every caption: no lift


def test_a_tagger_gives_the_likeliest_tags_and_a_guide_toward_their_words():
    classifier = torch.nn.Linear(4, 1000)
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.fill_(-20.0)
        classifier.bias[[285, 282, 207]] = torch.tensor([3.0, 1.0, 0.5])
    words = [""] * 1000
    words[285] = words[282] = "cat"
    tagger = Tagger(classifier, words, vocab("a", "cat"))
    probs = tagger.probabilities(torch.zeros(2, 4))
    found = tagger.tags(probs)
    assert [t.label for t in found[0]] == ["Egyptian cat", "tiger cat", "golden retriever"]
    assert [t.word for t in found[0]] == ["cat", "cat", ""]
    assert 0.8 < found[0][0].p < 0.9 and all(t.p >= tags.MIN_P for t in found[0])
    bonus, word_ids = tagger.guide(probs, weight=2.0)
    assert word_ids[0, :3].tolist() == [5, 5, -1]  # "cat" is word 5; the retriever has none
    assert torch.allclose(bonus[0, :3], 2 * probs[0, [285, 282, 207]])


def test_the_real_classifier_recognises_the_example_cat(lite0):
    pooled = lite0(to_pixels(load_photo(EXAMPLES / "tabby_cat.jpg", 224), 224)[None]).pooled
    top = Tagger(lite0.classifier, None, vocab()).tags(tags.probabilities(lite0.classifier, pooled))[0]
    assert "cat" in top[0].label.lower() or top[0].label == "tabby", top
