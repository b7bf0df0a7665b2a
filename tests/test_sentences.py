"""The sentence encoder against the reference implementation of the same model."""
from __future__ import annotations

import numpy as np
import pytest

from captioner.models.sentences import DIM, SentenceEncoder, load_sentence_encoder, model_dir

TEXTS = ["a dog runs on the beach",
         "Two children play in a fountain while their mother watches from a bench near the trees.",
         "x", "ÉCOLE résumé, naïve café", ""]


def test_vectors_match_the_reference_implementation(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(model_dir()), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    exact = SentenceEncoder(model_dir(), bf16=False)
    got = exact.embed(TEXTS, batch_size=2)  # batches of mixed lengths: padding must not leak
    assert got.shape == (len(TEXTS), DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    fast = SentenceEncoder(model_dir(), bf16=True).embed(TEXTS, batch_size=2)
    assert fast.dtype == np.float32 and (fast * expected).sum(1).min() > 0.999


def test_similar_sentences_are_closer_than_unrelated_ones():
    a, b, c = load_sentence_encoder().embed(["a black dog runs through the snow", "a dark dog running in snow",
                                             "a man rides a bicycle down a city street"])
    np.testing.assert_allclose([a @ a, b @ b, c @ c], 1.0, atol=1e-5)
    assert a @ b > 0.7 > 0.3 > a @ c
