"""The sentence encoder against vectors its reference implementation made of the same model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from captioner.data.images import file_sha256
from captioner.models.sentences import DIM, SentenceEncoder, load_sentence_encoder, model_dir

REFERENCE = Path(__file__).parent / "fixtures" / "minilm_reference.json"
"""sentence-transformers' vectors of a few sentences: tests/fixtures/make_minilm_reference.py says how it was made."""


def test_vectors_match_the_reference_implementation():
    """To 1e-5 per number in float32 (a tanh GELU instead of BERT's erf one is already 2.5e-4 off), and within
    1e-4 of cosine 1 in bfloat16; in batches of mixed lengths, so padding must not leak into the vectors."""
    reference = json.loads(REFERENCE.read_text())
    assert reference["model_sha256"] == file_sha256(model_dir() / "model.safetensors"), \
        "the packaged model changed: make the reference again (tests/fixtures/make_minilm_reference.py)"
    texts, expected = reference["texts"], np.array(reference["vectors"], np.float32)
    got = SentenceEncoder(model_dir(), bf16=False).embed(texts, batch_size=3)
    assert got.shape == (len(texts), DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    fast = SentenceEncoder(model_dir(), bf16=True).embed(texts, batch_size=3)
    assert fast.dtype == np.float32 and (fast * expected).sum(1).min() > 1 - 1e-4


def test_similar_sentences_are_closer_than_unrelated_ones():
    a, b, c = load_sentence_encoder().embed(["a black dog runs through the snow", "a dark dog running in snow",
                                             "a man rides a bicycle down a city street"])
    np.testing.assert_allclose([a @ a, b @ b, c @ c], 1.0, atol=1e-5)
    assert a @ b > 0.7 > 0.3 > a @ c
