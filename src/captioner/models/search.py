"""The search algorithms over a decoder: batched greedy and beam search with incremental state (the prefix is
never re-run), sampling, and the likelihood of a given caption. `decode.py` chooses among them."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data.text import END_ID, PAD_ID, START_ID, UNK_ID
from .decoders import Decoder, State


@dataclass
class Hypothesis:
    tokens: list[int]  # word ids, without <start> and <end>
    logprob: float  # total log-probability, <end> included
    score: float  # logprob / length ** length_penalty: what the beam ranks by
    attention: torch.Tensor | None  # [len(tokens) + 1, N]: where each word (and <end>) looked


NEVER = [PAD_ID, START_ID, UNK_ID]  # tokens no caption contains


def word_logprobs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(next word) [..., V] over the words a caption may contain: NEVER's tokens get no mass.

    Search, sampling and self-critical training all use this one distribution: a
    policy trained on another (one that keeps mass on tokens never sampled) slowly
    moves its mass there.
    """
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    return logits.index_fill(-1, _NEVER.to(logits.device), float("-inf")).log_softmax(-1)


_NEVER = torch.tensor(NEVER)


def _block_repeats(logp: torch.Tensor, history: torch.Tensor, n: int) -> torch.Tensor:
    """Rule out every word that would repeat an n-gram already in its beam: logp [B, K, V], history [B, K, t]."""
    if history.shape[2] < n - 1:
        return logp
    windows = history.unfold(2, n, 1) if history.shape[2] >= n else history[..., :0, None].expand(-1, -1, -1, n)
    tail = history[..., history.shape[2] - (n - 1):]  # [B, K, n - 1]: the words the next one would follow
    seen = (windows[..., :n - 1] == tail[..., None, :]).all(-1)  # [B, K, W]: windows that start like the tail
    V = logp.shape[-1]
    banned = torch.where(seen, windows[..., n - 1], V)  # V: a spare column for windows that do not match
    return logp + logp.new_zeros(*logp.shape[:2], V + 1).scatter_(2, banned, float("-inf"))[..., :V]


def _repeat(tensors: State, k: int) -> State:
    return tuple(t.repeat_interleave(k, 0) for t in tensors)


@torch.inference_mode()
def greedy(decoder: Decoder, pooled: torch.Tensor, grid: torch.Tensor, max_len: int = 30) -> list[Hypothesis]:
    """The most likely next word at every step, for a batch of photos."""
    state, memory = decoder.start(pooled, grid)
    B, device = pooled.shape[0], state[0].device  # where the decoder put the photos
    words = torch.full((B,), START_ID, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    logprob = torch.zeros(B, device=device)
    tokens, alphas = [], []
    for t in range(max_len + 1):
        logits, state, alpha = decoder.step(words, state, memory)
        logp = word_logprobs(logits)
        alpha = alpha.float() if alpha is not None else None
        if t == max_len:
            words = torch.full((B,), END_ID, dtype=torch.long, device=device)
        else:
            words = logp.argmax(-1)
        logprob += torch.where(done, 0.0, logp.gather(1, words[:, None]).squeeze(1))
        words = torch.where(done, END_ID, words)
        tokens.append(words)
        alphas.append(alpha)
        done |= words == END_ID
        if done.all():
            break
    tokens, logprob = torch.stack(tokens, 1).cpu(), logprob.cpu()  # the captions leave for the host at once
    alphas = [a.cpu() for a in alphas] if alphas[0] is not None else alphas
    out = []
    for b in range(B):
        n = int((tokens[b] != END_ID).sum())  # tokens before <end>
        attention = torch.stack([a[b] for a in alphas[:n + 1]]) if alphas[0] is not None else None
        out.append(Hypothesis(tokens[b, :n].tolist(), float(logprob[b]), float(logprob[b]), attention))
    return out


@torch.inference_mode()
def sample(decoder: Decoder, pooled: torch.Tensor, grid: torch.Tensor, k: int, max_len: int = 30,
           generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
    """k captions per photo, each word drawn from the decoder's distribution.

    Returns ids [B * k, T]: row b * k + j is photo b's j-th caption, its words,
    <end>, then <pad>.
    """
    state, memory = decoder.start(pooled, grid)
    state, memory = _repeat(state, k), _repeat(memory, k)
    words = torch.full((pooled.shape[0] * k,), START_ID, dtype=torch.long, device=state[0].device)
    done = torch.zeros_like(words, dtype=torch.bool)
    out = []
    for t in range(max_len + 1):
        logits, state, _ = decoder.step(words, state, memory)
        if t == max_len:
            words = torch.full_like(words, END_ID)
        else:
            words = _draw(word_logprobs(logits, temperature).exp(), generator)
        words = torch.where(done, PAD_ID, words)
        out.append(words)
        done |= words == END_ID
        if done.all():
            break
    return torch.stack(out, 1)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One word per row of probs [B, V], drawn with `generator` on its own device (a CPU generator keeps a
    run's random numbers the same on any device), returned on probs' device."""
    where = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(where), 1, generator=generator).squeeze(1).to(probs.device)


Guide = tuple[torch.Tensor, torch.Tensor]
"""Words a photo's caption is nudged toward: bonus [B, k] and word ids [B, k] (-1: none).

Each of the k entries (from one of the photo's tags) adds its bonus to the
log-probability of its word the first time a caption uses it; once a caption has
the word, the entries for it add nothing more.
"""


@torch.inference_mode()
def beam_search(decoder: Decoder, pooled: torch.Tensor, grid: torch.Tensor, beam: int = 3, max_len: int = 30,
                length_penalty: float = 0.0, block_ngram: int = 0,
                guide: Guide | None = None) -> list[list[Hypothesis]]:
    """The `beam` best captions of each photo, best first.

    Candidates are ranked by (log-probability + the guide's bonuses collected) /
    length ** length_penalty (0: plain log-probability, 1: mean log-probability
    per word); a hypothesis's `logprob` is the model's own. A finished beam keeps
    its score and competes with the open ones until every beam of the photo has
    ended. With `block_ngram` n > 0, no caption repeats an n-gram of its own.
    A beam wider than the captions there are to find (a tiny vocabulary, a short
    maximum length) gives fewer than `beam` captions, never impossible ones.
    """
    state, memory = decoder.start(pooled, grid)
    B, K, device = pooled.shape[0], beam, state[0].device  # where the decoder put the photos
    state, memory = _repeat(state, K), _repeat(memory, K)
    logprob = torch.full((B, K), float("-inf"), device=device)
    logprob[:, 0] = 0.0  # all beams start identical: keep one
    collected = torch.zeros(B, K, device=device)  # the guide's bonuses each beam has collected
    if guide is not None:
        left = guide[0].to(device).float()[:, None].expand(B, K, -1).clone()  # [B, K, k]: bonuses not yet collected
        guide_words = guide[1].to(device)[:, None].expand(B, K, -1)  # [B, K, k]
    lengths = torch.zeros(B, K, device=device)
    done = torch.zeros(B, K, dtype=torch.bool, device=device)
    words = torch.full((B * K,), START_ID, dtype=torch.long, device=device)
    history = torch.empty(B, K, 0, dtype=torch.long, device=device)  # kept step by step only for n-gram blocking
    trail = []  # each step's (origin, word, attention): the beams are traced back through it at the end
    offsets = (torch.arange(B, device=device) * K)[:, None]
    for t in range(max_len + 1):
        logits, state, alpha = decoder.step(words, state, memory)
        logp = word_logprobs(logits).view(B, K, -1)
        if block_ngram:
            logp = _block_repeats(logp, history, block_ngram)
        V = logp.shape[-1]
        if t == 0 and guide is not None:  # each guide word's column in the bonuses (V: no word)
            columns = torch.where(guide_words < 0, V, guide_words)
        if t == max_len:  # out of room: every open beam ends here
            end_only = torch.full_like(logp, float("-inf"))
            end_only[..., END_ID] = logp[..., END_ID]
            logp = end_only
        # A finished beam's only continuation is <end> again, at no cost and no length.
        total = logp.masked_fill_(done[..., None], float("-inf"))
        total[..., END_ID].masked_fill_(done, 0.0)
        total += logprob[..., None]  # [B, K, V]
        if guide is not None:  # each guide word's bonus not yet collected, in its word's column
            bonus = collected[..., None] + left.new_zeros(B, K, V + 1).scatter_add_(2, columns, left)[..., :V]
        else:
            bonus = collected[..., None]
        new_len = lengths + (~done).float()
        rank = (total + bonus).div_(new_len.clamp(min=1)[..., None] ** length_penalty)
        flat = rank.view(B, -1).topk(K, dim=1).indices  # [B, K]
        origin, words_bk = flat // V, flat % V
        logprob = total.view(B, -1).gather(1, flat)
        if guide is not None:
            collected = bonus.view(B, -1).gather(1, flat)
            left = left.gather(1, origin[..., None].expand_as(left))
            left = left.masked_fill(guide_words == words_bk[..., None], 0.0)
        else:
            collected = collected.gather(1, origin)
        lengths = new_len.gather(1, origin)
        rows = (origin + offsets).view(-1)
        state = tuple(s.index_select(0, rows) for s in state)
        if block_ngram:
            history = torch.cat([history.gather(1, origin[..., None].expand(-1, -1, history.shape[2])),
                                 words_bk[..., None]], 2)
        trail.append((origin, words_bk, alpha))
        done = done.gather(1, origin) | (words_bk == END_ID)
        words = words_bk.view(-1)
        if done.all():
            break
    tokens, attention = _trace(trail)
    score = (logprob + collected) / lengths.clamp(min=1) ** length_penalty
    # The captions leave for the host at once.
    order = score.argsort(1, descending=True).tolist()
    tokens, logprob, score = tokens.tolist(), logprob.tolist(), score.tolist()
    attention = attention.cpu() if attention is not None else None
    out = []
    for b in range(B):
        hyps = []
        for k in order[b]:
            if hyps and not math.isfinite(logprob[b][k]):  # a beam wider than there are captions to find
                continue
            seq = tokens[b][k]
            n = seq.index(END_ID) if END_ID in seq else len(seq)
            att = attention[b, k, :n + 1] if attention is not None else None
            hyps.append(Hypothesis(seq[:n], logprob[b][k], score[b][k], att))
        out.append(hyps)
    return out


def _trace(trail: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each final beam's words [B, K, T] and attention [B, K, T, N] (None without), followed back from the
    last step through `trail`: each step's origin (the beam it extended) [B, K], word [B, K] and attention
    [B * K, N] (rows in the order of the beams it extended)."""
    B, K = trail[0][0].shape
    at = torch.arange(K, device=trail[0][0].device).expand(B, K)  # where each final beam is at the step traced
    words, alphas = [], []
    for origin, word, alpha in reversed(trail):
        words.append(word.gather(1, at))
        at = origin.gather(1, at)
        if alpha is not None:
            alphas.append(alpha.float().view(B, K, -1).gather(1, at[..., None].expand(-1, -1, alpha.shape[-1])))
    attention = torch.stack(alphas[::-1], 2) if alphas else None
    return torch.stack(words[::-1], 2), attention


@torch.inference_mode()
def caption_logprob(decoder: Decoder, pooled: torch.Tensor, grid: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """log p(caption | photo) [B] of one caption (`<start> w1 .. wn <end>` ids) for each of B photos."""
    captions = torch.tensor(ids, device=decoder.device)[None].expand(pooled.shape[0], -1)
    logits, _ = decoder(pooled, grid, captions)
    return logits.float().log_softmax(-1).gather(2, captions[:, 1:, None]).squeeze(2).sum(1)
