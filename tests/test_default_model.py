"""The model shipped in the package: complete, small, pickle-free, and it describes photos."""
import json
from pathlib import Path

from captioner import Captioner
from captioner.data.text import clean
from captioner.evaluation.metrics import dev_cider
from captioner.models.folder import DEFAULT_MODEL

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_shipped_model_folder_is_complete_and_small():
    names = {p.name for p in DEFAULT_MODEL.iterdir()}
    assert {"model.safetensors", "encoder_top.safetensors", "config.json", "vocab.json", "search.json",
            "MODEL_CARD.md"} <= names
    assert not any(name.endswith((".pt", ".pth", ".pkl", ".bin")) for name in names)  # no pickle
    assert sum(p.stat().st_size for p in DEFAULT_MODEL.iterdir()) <= 40 * 2**20
    config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert config["encoder"] == {"name": "efficientnet-lite2", "input_size": 224, "top": 1}  # its last block tuned
    card = (DEFAULT_MODEL / "MODEL_CARD.md").read_text()
    assert "## Metrics" in card and "Flickr8k test" in card and "Conceptual Captions" in card  # every corpus named


def test_shipped_model_captions_the_examples():
    captioner = Captioner.load()
    captions = captioner.caption([EXAMPLES])
    assert len(captions) == len(list(EXAMPLES.glob("*.jpg")))
    for c in captions:
        assert not c.error
        assert len(c.words) >= 3 and "<unk>" not in c.words
        assert c.score < 0 and len(c.alternatives) == captioner.model.decode.beam - 1  # the beam's others
    assert len({c.text for c in captions}) >= len(captions) - 1


def test_shipped_model_describes_flickr8k_test_photos(flickr8k_root):
    """On unseen corpus photos the captions share far more with the human ones than chance does."""
    names = (flickr8k_root / "Flickr_8k.testImages.txt").read_text().split()[:40]
    refs: dict[str, list[str]] = {n: [] for n in names}
    for line in (flickr8k_root / "Flickr8k.token.txt").read_text().splitlines():
        image, _, caption = line.partition("\t")
        name = image.split("#")[0]
        if name in refs:
            refs[name].append(" ".join(clean(caption)))
    captions = Captioner.load().caption([flickr8k_root / "Images" / n for n in names])
    predicted = [" ".join(c.words) for c in captions]
    references = [refs[n] for n in names]
    shuffled = predicted[1:] + predicted[:1]  # each photo given another photo's caption
    assert dev_cider(predicted, references) > 30
    assert dev_cider(predicted, references) > 2 * dev_cider(shuffled, references)


def test_shipped_search_finds_flickr8k_test_photos_by_their_human_captions(flickr8k_root, tmp_path):
    """Each of 40 unseen photos, searched for by a human caption of it, is usually the first match; a
    description of something no photo shows is called weak."""
    from captioner.gallery import Gallery

    names = (flickr8k_root / "Flickr_8k.testImages.txt").read_text().split()[40:80]
    first_caption = {}
    for line in (flickr8k_root / "Flickr8k.token.txt").read_text().splitlines():
        image, _, caption = line.partition("\t")
        first_caption.setdefault(image.split("#")[0], caption)
    with Gallery.create(tmp_path / "g.db") as g:
        assert g.embedding is not None  # the shipped model has its photo-text embedding
        g.index([flickr8k_root / "Images" / n for n in names], progress=False)
        found = [g.search(first_caption[n], k=1)[0] for n in names]
        hits = sum(m.path.name == n for m, n in zip(found, names))
        assert hits >= 20  # chance: 1 in 40
        assert sum(m.weak for m, n in zip(found, names) if m.path.name == n) <= 2
        assert all(m.weak for m in g.search("a screenshot of a spreadsheet of quarterly sales figures", k=3))
