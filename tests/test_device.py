"""Devices: a name resolves to a device this machine has or to one sentence; every tensor the caption search
and the decoder make follows their inputs; the CPU keeps its bfloat16 path. (Tests run on the CPU.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from captioner.captioning import Captioner
from captioner.data.text import SPECIALS, Vocab
from captioner.errors import CaptionerError
from captioner.models import confidence
from captioner.models import device as devices
from captioner.models.decode import DecodeConfig, decode
from captioner.models.decoders import KINDS, Decoder, DecoderConfig
from captioner.models.folder import load_model
from captioner.models.search import Hypothesis, caption_logprob, sample
from captioner.models.tags import Tagger, class_words
from conftest import TINY_ENCODER, cached_encoder

V, D, N = 40, 32, 9
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HERE = not torch.cuda.is_available() and not torch.backends.mps.is_available()
"""torch sees neither a CUDA GPU nor MPS: the machine these tests are written for."""


@pytest.mark.skipif(not HERE, reason="a GPU is present")
def test_auto_is_the_cpu_here_and_a_gpu_this_machine_lacks_is_one_sentence_naming_what_to_use():
    assert devices.resolve() == devices.resolve("auto") == torch.device("cpu")
    assert devices.resolve("cpu") == devices.resolve(torch.device("cpu")) == torch.device("cpu")
    for name in ("cuda", "cuda:1", "mps"):
        with pytest.raises(CaptionerError, match=rf"^device {name} is not available here \(.*\): use one of auto, "
                                                  r"cpu$") as e:
            devices.resolve(name)
        assert "\n" not in str(e.value) and str(e.value).count(". ") == 0


def test_an_unknown_device_names_the_choices():
    for name in ("bogus", "meta", "gpu", ""):
        with pytest.raises(CaptionerError, match=rf"^unknown device '{name}': choose one of auto, cpu, cuda, mps$"):
            devices.resolve(name)


def test_auto_takes_cuda_then_mps_then_the_cpu(monkeypatch):
    for cuda, mps, chosen in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda mps=mps: mps)
        assert devices.resolve("auto").type == chosen


def test_the_cpu_keeps_its_bfloat16_path_and_float16_never_meets_a_gradient(monkeypatch):
    cpu = torch.device("cpu")
    x = torch.randn(4, 8)
    with devices.autocast(cpu):
        y = x @ x.T
    assert y.dtype == (torch.bfloat16 if devices.cpu_bf16() else torch.float32)
    assert devices.precision(cpu) == ("bf16" if devices.cpu_bf16() else "fp32")
    with devices.autocast(cpu, enabled=False):
        assert (x @ x.T).dtype == torch.float32
    monkeypatch.setattr(devices, "fast_dtype", lambda device: torch.float16)  # a CUDA GPU before Ampere
    with torch.no_grad(), devices.autocast(cpu):
        assert (x @ x.T).dtype == torch.float16  # inference may run at float16...
    with devices.autocast(cpu):
        assert (x @ x.T).dtype == torch.float32  # ...training, which does no loss scaling, may not


def _decoder(kind: str, tags: bool = False) -> Decoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(kind=kind, embed_dim=16, hidden_dim=24, attention_dim=12, dropout=0.0, tags=tags)
    return Decoder(cfg, V, D, classes=7 if tags else 0).eval()


def _features(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, D, generator=g).half(), torch.randn(batch, N, D, generator=g).half()


def _everything(decoder: Decoder, tagger: Tagger, pooled: torch.Tensor, grid: torch.Tensor,
                captions: torch.Tensor, owner: torch.Tensor, generator: torch.Generator) -> list:
    """What the search and the decoder give, by every path: greedy, guided and blocked beams, sampling, the
    likelihood of a caption, teacher forcing (with owners and without)."""
    out = []
    for settings in (DecodeConfig(beam=1, max_len=6), DecodeConfig(beam=3, max_len=6, block_ngram=2, tag_weight=2.0,
                                                                   length_penalty=0.5)):
        beams, probs = decode(decoder, pooled, grid, settings, tagger)
        out += [[(h.tokens, round(h.logprob, 4), None if h.attention is None else h.attention.tolist())
                 for h in hyps] for hyps in beams] + [probs.tolist()]
    out.append(sample(decoder, pooled, grid, 2, 6, generator.manual_seed(0)).tolist())
    out.append(caption_logprob(decoder, pooled, grid, [1, 5, 6, 2]).tolist())
    for whose in (owner, None):
        logits, attention = decoder(pooled, grid, captions, whose)
        out.append([logits.tolist(), None if attention is None else attention.tolist()])
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_tensor_the_search_and_the_decoder_make_follows_their_inputs(kind):
    """With torch's default device set to "meta", a tensor made without naming its device lands there and
    cannot meet the CPU inputs: the captions must come out the same, so every tensor followed its inputs
    (on a GPU, the same code keeps everything on the GPU)."""
    classifier = torch.nn.Linear(D, 1000)
    torch.nn.init.normal_(classifier.weight, std=0.5)
    vocab = Vocab([*SPECIALS, *(f"w{i}" for i in range(4, V))])
    words = [""] * 5 + ["w5", "w6"] + [""] * 993
    decoder = _decoder(kind, tags=kind == "attention")
    inputs = (*_features(), torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 8, 9, 10, 2]]),
              torch.tensor([0, 2, 1]), torch.Generator())
    expected = _everything(decoder, Tagger(classifier, words, vocab), *inputs)
    with torch.device("meta"):
        assert _everything(decoder, Tagger(classifier, words, vocab), *inputs) == expected


def test_tags_and_confidence_features_follow_their_inputs():
    """The same check for what is made beside the search: class words, a caption's confidence features, and the
    confidence's regression."""
    vocab = Vocab([*SPECIALS, "a", "cat", "dog", "man", "sits"])
    probs = torch.zeros(260, 1000)
    probs[:30, 0], probs[30:60, 1] = 0.9, 0.9
    references = [["a cat sits"] * 2] * 30 + [["a dog sits"]] * 30 + [["a man sits"]] * 200
    beams = [[Hypothesis([4, 5], -1.0, -1.0, None), Hypothesis([4, 6], -2.0, -2.0, None)]] * 2
    pooled, centres, word_ids = torch.randn(2, D), torch.randn(5, D).half(), torch.full((1000,), -1)
    word_ids[0] = 5
    x, good = torch.randn(50, len(confidence.FEATURES)), torch.arange(50) % 2 == 0
    expected = (class_words(probs, references, vocab), confidence.features(beams, pooled, centres, probs[:2], word_ids),
                confidence.fit(x, good, steps=5).weights)
    with torch.device("meta"):
        assert class_words(probs, references, vocab) == expected[0] and expected[0][:2] == ["cat", "dog"]
        assert confidence.features(beams, pooled, centres, probs[:2], word_ids).tolist() == expected[1].tolist()
        assert confidence.fit(x, good, steps=5).weights.tolist() == expected[2].tolist()


@pytest.fixture(scope="module")
def photos() -> list:
    return [EXAMPLES / "tabby_cat.jpg", *sorted(EXAMPLES.glob("*.jpg"))[:2]]


@pytest.mark.skipif(not HERE, reason="a GPU is present: the default is not the CPU")
def test_a_captioner_on_the_cpu_captions_as_the_default_does(tiny_model_dir, reuse_encoders, photos):
    default = Captioner.load(tiny_model_dir).caption(photos)
    for device in ("cpu", torch.device("cpu")):
        on_cpu = Captioner.load(tiny_model_dir, device=device)
        assert on_cpu.device == torch.device("cpu") and on_cpu.model.decoder.device == torch.device("cpu")
        assert [(c.text, c.score, c.alternatives) for c in on_cpu.caption(photos)] == \
            [(c.text, c.score, c.alternatives) for c in default]


@pytest.mark.skipif(not HERE, reason="a GPU is present")
def test_an_unavailable_device_stops_a_captioner_before_it_loads(tiny_model_dir):
    with pytest.raises(CaptionerError, match="^device cuda is not available here"):
        Captioner.load(tiny_model_dir, device="cuda")


def test_the_encoder_runs_where_it_is_placed_and_its_key_names_the_precision_there():
    encoder = cached_encoder(TINY_ENCODER, device="cpu")
    assert encoder.device == torch.device("cpu")
    assert encoder.spec.key.endswith("-" + devices.precision(torch.device("cpu")))


@pytest.mark.skipif(not HERE, reason="a GPU is present")
def test_every_entry_point_refuses_a_device_this_machine_lacks_before_it_reads_or_writes(tiny_model_dir, tmp_path):
    from captioner.evaluation.evaluate import evaluate
    from captioner.gallery import Gallery
    from captioner.training.align import align, retune
    from captioner.training.calibrate import calibrate
    from captioner.web.app import serve

    model = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()}
    corpus = tmp_path / "no corpus"  # never reached: the device is said first
    for call in (lambda: evaluate(tiny_model_dir, corpus, out=tmp_path / "eval", device="mps"),
                 lambda: calibrate(tiny_model_dir, [corpus], device="mps"),
                 lambda: align(tiny_model_dir, [corpus], device="mps"),
                 lambda: retune(tiny_model_dir, [corpus], device="mps"),
                 lambda: Gallery.create(tmp_path / "gallery.db", tiny_model_dir, device="mps"),
                 lambda: serve(tiny_model_dir, device="mps")):
        with pytest.raises(CaptionerError, match="^device mps is not available here"):
            call()
    assert list(tmp_path.iterdir()) == [] and {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()} == model


def test_a_gallery_without_an_embedding_embeds_captions_and_queries_on_its_captioners_device(tiny_model_dir,
                                                                                           tmp_path, monkeypatch):
    from captioner.gallery import Gallery
    from captioner.models import embedding, sentences

    asked = []

    def spy(device="auto"):
        asked.append(device)
        return sentences.load_sentence_encoder(device)

    monkeypatch.setattr(embedding, "load_sentence_encoder", spy)
    tiny = Captioner(load_model(tiny_model_dir), cached_encoder(TINY_ENCODER))
    assert tiny.embedding is None  # the tiny model has no trained embedding: search falls back to the sentences
    with Gallery.create(tmp_path / "g.db", captioner=tiny) as g:
        g.index([EXAMPLES / "tabby_cat.jpg"], progress=False)
        g.search("a cat")
        g.similar(EXAMPLES / "tabby_cat.jpg")
    assert len(asked) >= 3 and set(asked) == {tiny.device}  # never "auto" behind the captioner's back
