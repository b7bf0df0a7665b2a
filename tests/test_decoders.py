"""Decoder shapes and the search: greedy, beam, <end>, maximum length, no <unk>."""
import copy
import math

import pytest
import torch

from captioner.data.text import END_ID, PAD_ID, START_ID, UNK_ID
from captioner.errors import CaptionerError
from captioner.models.decode import DecodeConfig, decode
from captioner.models.decoders import KINDS, Decoder, DecoderConfig, PackedLinear, PackedLSTMCell, attending, pack
from captioner.models.device import cpu_bf16
from captioner.models.search import beam_search, greedy, sample, word_logprobs

V, D, N = 50, 32, 9


def small(kind: str, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(DecoderConfig(kind=kind, embed_dim=16, hidden_dim=24, attention_dim=12, dropout=0.0), V, D).eval()


def features(batch: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, D, generator=g).half(), torch.randn(batch, N, D, generator=g).half()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_forward_shapes(kind):
    pooled, grid = features()
    captions = torch.randint(4, V, (3, 7))
    logits, attention = small(kind)(pooled, grid, captions)
    assert logits.shape == (3, 6, V)
    if KINDS[kind].attends:
        assert attention.shape == (3, 6, N)
        assert torch.allclose(attention.sum(-1), torch.ones(3, 6), atol=1e-5)
    else:
        assert attention is None


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_step_matches_teacher_forcing(kind):
    """The incremental step and the whole-caption pass compute the same logits, padding or not."""
    decoder = small(kind)
    pooled, grid = features()
    g = torch.Generator().manual_seed(2)
    captions = torch.randint(4, V, (70, 9), generator=g)  # the transformer runs them in chunks of 32
    captions[:, 0] = START_ID
    for row, length in enumerate(torch.randint(2, 10, (70,), generator=g).tolist()):  # short ones end early
        captions[row, length:] = PAD_ID
    owner = torch.randint(0, 3, (70,), generator=g)  # several captions per photo
    logits, _ = decoder(pooled, grid, captions, owner)
    state, memory = decoder.start(pooled[owner], grid[owner])
    for t in range(8):
        step_logits, state, _ = decoder.step(captions[:, t], state, memory)
        valid = captions[:, t + 1] != PAD_ID
        assert torch.allclose(step_logits[valid], logits[valid, t], atol=1e-5)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_beam_one_equals_greedy(kind):
    decoder = small(kind, seed=3)
    pooled, grid = features(5)
    for g, b in zip(greedy(decoder, pooled, grid, max_len=12), beam_search(decoder, pooled, grid, beam=1, max_len=12)):
        assert g.tokens == b[0].tokens
        assert math.isclose(g.logprob, b[0].logprob, rel_tol=1e-5, abs_tol=1e-5)


def test_beam_scores_sorted_distinct_and_at_least_greedy():
    decoder = small("attention", seed=4)
    pooled, grid = features(4)
    greedy_hyps = greedy(decoder, pooled, grid, max_len=10)
    for g, hyps in zip(greedy_hyps, beam_search(decoder, pooled, grid, beam=4, max_len=10)):
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 4
        assert hyps[0].logprob >= g.logprob - 1e-5  # a wider beam never finds a worse best caption
        assert hyps[0].attention.shape == (len(hyps[0].tokens) + 1, N)


def test_a_new_kind_is_a_module_and_a_registration(gru_kind):
    """A kind written outside the package (conftest.GRUKind) and registered trains, decodes through the one
    decoding path, and is listed wherever the kinds are."""
    assert gru_kind in KINDS and gru_kind in attending()
    with pytest.raises(CaptionerError, match=f"unknown decoder kind 'gru2': choose one of .*, {gru_kind}$"):
        Decoder(DecoderConfig(kind="gru2"), V, D)
    decoder = small(gru_kind)
    pooled, grid = features()
    captions = torch.randint(4, V, (3, 7), generator=torch.Generator().manual_seed(2))
    captions[:, 0] = START_ID
    logits, attention = decoder(pooled, grid, captions)
    assert logits.shape == (3, 6, V) and attention.shape == (3, 6, N)
    assert torch.allclose(attention.sum(-1), torch.ones(3, 6), atol=1e-5)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), captions[:, 1:].flatten()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())  # every weight learns
    beams, _ = decode(decoder, pooled, grid, DecodeConfig(beam=3, max_len=8))
    for b, hyps in enumerate(beams):
        assert len(hyps) == 3
        best = hyps[0]
        caption = torch.tensor([[START_ID, *best.tokens, END_ID]])
        with torch.no_grad():
            logits, attention = decoder(pooled[b:b + 1], grid[b:b + 1], caption)
        # the search's caption, fed back with teacher forcing, has the log-probability and attention it found
        assert word_logprobs(logits[0]).gather(1, caption[0, 1:, None]).sum() == pytest.approx(best.logprob, abs=1e-4)
        assert torch.allclose(attention[0], best.attention, atol=1e-5)


class Scripted(torch.nn.Module):
    """A stand-in decoder whose next-word log-probabilities follow a script, step by step."""

    def __init__(self, script):
        super().__init__()
        self.script = script  # list of {token: logit} per step; the last one repeats

    def start(self, pooled, grid):
        return (torch.zeros(pooled.shape[0], 1),), ()

    def step(self, words, state, memory):
        t = int(state[0][0, 0])
        logits = torch.full((words.shape[0], V), -20.0)
        for token, value in self.script[min(t, len(self.script) - 1)].items():
            logits[:, token] = value
        return logits, (state[0] + 1,), None


def test_search_stops_at_end_and_skips_unk_pad_start():
    # <unk>, <pad> and <start> are the most likely words at every step, yet never chosen.
    script = [{UNK_ID: 9, PAD_ID: 9, START_ID: 9, 5: 5}, {UNK_ID: 9, 6: 5}, {END_ID: 5, 7: 1}, {8: 5}]
    decoder = Scripted(script)
    pooled, grid = features(2)
    assert [h.tokens for h in greedy(decoder, pooled, grid, max_len=10)] == [[5, 6], [5, 6]]
    best = beam_search(decoder, pooled, grid, beam=3, max_len=10)[0][0]
    assert best.tokens == [5, 6]
    for hyps in beam_search(decoder, pooled, grid, beam=3, max_len=10):
        for h in hyps:
            assert not {UNK_ID, PAD_ID, START_ID, END_ID} & set(h.tokens)


def test_search_respects_maximum_length():
    decoder = Scripted([{9: 5, END_ID: -10}])  # would never end by itself
    pooled, grid = features(2)
    assert all(len(h.tokens) == 4 for h in greedy(decoder, pooled, grid, max_len=4))
    for hyps in beam_search(decoder, pooled, grid, beam=3, max_len=4):
        assert all(len(h.tokens) <= 4 for h in hyps)
        assert max(len(h.tokens) for h in hyps) == 4


def test_length_penalty_prefers_longer_captions():
    # Ending now costs little; going on costs a little per word but each word is likely.
    script = [{5: 0.0, END_ID: -0.5}, {6: 0.0, END_ID: -0.3}, {7: 0.0, END_ID: 0.0}, {END_ID: 5}]
    decoder = Scripted(script)
    pooled, grid = features(1)
    plain = beam_search(decoder, pooled, grid, beam=3, max_len=10, length_penalty=0.0)[0][0]
    normalised = beam_search(decoder, pooled, grid, beam=3, max_len=10, length_penalty=1.0)[0][0]
    assert len(normalised.tokens) >= len(plain.tokens)
    assert normalised.score == pytest.approx(normalised.logprob / (len(normalised.tokens) + 1))


def test_ngram_blocking_stops_a_repeated_phrase():
    # The decoder would say "5 6 5 6": with bigram blocking the second "5 6" is ruled out and it ends instead.
    script = [{5: 5, 7: 1}, {6: 5, 7: 1}, {5: 5, 7: 1}, {6: 5, END_ID: 1, 7: 0}, {END_ID: 5}]
    decoder = Scripted(script)
    pooled, grid = features(2)
    assert beam_search(decoder, pooled, grid, beam=1, max_len=10)[0][0].tokens == [5, 6, 5, 6]
    assert beam_search(decoder, pooled, grid, beam=1, max_len=10, block_ngram=2)[0][0].tokens == [5, 6, 5]
    assert beam_search(decoder, pooled, grid, beam=1, max_len=10, block_ngram=3)[0][0].tokens == [5, 6, 5, 6]
    for hyps in beam_search(decoder, pooled, grid, beam=3, max_len=10, block_ngram=1):  # no word twice
        for h in hyps:
            assert len(set(h.tokens)) == len(h.tokens)


def test_sampling_follows_the_distribution():
    decoder = Scripted([{5: math.log(0.75), 6: math.log(0.25)}, {END_ID: 20}])
    pooled, grid = features(2)
    ids = sample(decoder, pooled, grid, k=1000, max_len=10, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (2000, 2)
    assert set(ids[:, 1].tolist()) == {END_ID}
    assert 0.72 < (ids[:, 0] == 5).float().mean() < 0.78


def test_sampling_ends_every_caption_and_pads_after():
    decoder = Scripted([{9: 5, END_ID: 4}])  # ends now and then, and at max_len at the latest
    pooled, grid = features(3)
    ids = sample(decoder, pooled, grid, k=4, max_len=6, generator=torch.Generator().manual_seed(1))
    assert ids.shape[0] == 12 and ids.shape[1] <= 7
    for row in ids.tolist():
        end = row.index(END_ID)
        assert set(row[:end]) == {9} or end == 0
        assert set(row[end + 1:]) <= {PAD_ID}


def test_a_guide_word_gets_into_the_caption_once_and_the_logprob_stays_the_models():
    # The decoder prefers "5 6" then <end>; word 8 is less likely than 6 by 2 nats at the second step.
    script = [{5: 5}, {6: 4, 8: 2, END_ID: 1}, {END_ID: 5, 8: 3}, {END_ID: 5}]
    decoder = Scripted(script)
    pooled, grid = features(2)
    plain = beam_search(decoder, pooled, grid, beam=3, max_len=10)
    assert [hyps[0].tokens for hyps in plain] == [[5, 6], [5, 6]]
    # Photo 0's tags name word 8 with probability 0.9 (weight 4: a bonus of 3.6 nats); photo 1's name nothing.
    guide = (4 * torch.tensor([[0.9, 0.1], [0.9, 0.1]]), torch.tensor([[8, -1], [-1, -1]]))
    guided = beam_search(decoder, pooled, grid, beam=3, max_len=10, guide=guide)
    best = guided[0][0]
    assert best.tokens == [5, 8] and guided[1][0].tokens == [5, 6]
    assert best.tokens.count(8) == 1  # the bonus is collected once: no "8 8"
    logp = {tuple(h.tokens): h.logprob for h in plain[0]}
    assert best.logprob == pytest.approx(logp[(5, 8)], abs=1e-5)  # the model's own log-probability
    assert best.score == pytest.approx(best.logprob + 3.6, abs=1e-5)
    zero = beam_search(decoder, pooled, grid, beam=3, max_len=10, guide=(0 * guide[0], guide[1]))
    assert [[h.tokens for h in hyps] for hyps in zero] == [[h.tokens for h in hyps] for hyps in plain]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_decoder_with_tags_reads_the_class_probabilities(kind):
    torch.manual_seed(0)
    cfg = DecoderConfig(kind=kind, embed_dim=16, hidden_dim=24, attention_dim=12, dropout=0.0, tags=True)
    decoder = Decoder(cfg, V, D, classes=7).eval()
    assert not any(p.requires_grad for p in decoder.classifier.parameters())
    pooled, grid = features(2)
    captions = torch.tensor([[START_ID, 5, 6, END_ID], [START_ID, 7, END_ID, PAD_ID]])
    logits, _ = decoder(pooled, grid, captions)
    assert logits.shape == (2, 3, V)
    with torch.no_grad():
        decoder.classifier.bias[3] += 10.0  # the photos now look like class 3
    assert not torch.allclose(decoder(pooled, grid, captions)[0], logits)
    with pytest.raises(ValueError, match="number of classes"):
        Decoder(cfg, V, D)


def test_a_beam_wider_than_the_captions_to_find_gives_only_possible_ones():
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(kind="attention", embed_dim=8, hidden_dim=8, attention_dim=4, dropout=0.0),
                      6, D).eval()  # the four specials and two words
    pooled, grid = features(2)
    for hyps in beam_search(decoder, pooled, grid, beam=40, max_len=2):
        assert 1 <= len(hyps) < 40
        assert all(math.isfinite(h.logprob) and math.isfinite(h.score) for h in hyps)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)


@pytest.mark.skipif(not cpu_bf16(), reason="packing applies to bfloat16 decoders, which this CPU does not run")
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_packed_decoder_computes_exactly_what_the_bfloat16_one_does(kind):
    plain = small(kind, seed=5).to(torch.bfloat16)
    packed = pack(copy.deepcopy(plain))
    assert any(isinstance(m, (PackedLinear, PackedLSTMCell)) for m in packed.modules())
    assert not any(type(m) in (torch.nn.Linear, torch.nn.LSTMCell) for m in packed.modules())
    assert packed.state_dict().keys() == plain.state_dict().keys()  # a model folder saves as before
    pooled, grid = features(4)
    captions = torch.randint(4, V, (4, 7), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        assert torch.equal(packed(pooled, grid, captions)[0], plain(pooled, grid, captions)[0])
    guide = (torch.rand(4, 2), torch.randint(4, V, (4, 2)))
    for got, expected in zip(beam_search(packed, pooled, grid, beam=3, max_len=10, guide=guide),
                             beam_search(plain, pooled, grid, beam=3, max_len=10, guide=guide)):
        assert [(h.tokens, h.logprob, h.score) for h in got] == [(h.tokens, h.logprob, h.score) for h in expected]
        assert all(h.attention is None and g.attention is None or torch.equal(h.attention, g.attention)
                   for h, g in zip(got, expected))
