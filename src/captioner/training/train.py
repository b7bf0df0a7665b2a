"""Training: whole captions with teacher forcing, dev-split selection by CIDEr, exact resume."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..data.text import END_ID, PAD_ID, START_ID, Vocab
from ..errors import CaptionerError
from ..evaluation.metrics import dev_cider
from ..extras import require
from ..features.splits import Split, load_training
from ..files import atomic_path, write_atomic
from ..models import confidence
from ..models.decode import GREEDY, decode
from ..models.decoders import Decoder
from ..models.encoders import bf16_supported, load_encoder
from ..models.folder import Model, save_model
from ..models.glove import GLOVE_DIM, glove_vectors
from ..models.search import sample, word_logprobs
from ..models.tags import class_words, probabilities
from .cider import CiderD
from .config import Config, TrainConfig
from .parallel import Workers

require("train", "matplotlib")  # for curve.png: checked before training, not after its first epoch

CHECKPOINT = "checkpoint.safetensors"


def caption_split(decoder: Decoder, split: Split, vocab: Vocab, max_len: int, batch_size: int = 500) -> list[str]:
    """Greedy captions of every photo of a split (how dev scoring chooses the epoch)."""
    decoder.eval()
    beams, _ = decode(decoder, split.pooled, split.grid, GREEDY.override(max_len=max_len), batch_size=batch_size)
    return [vocab.decode(hyps[0].tokens) for hyps in beams]


def build_decoder(cfg: Config, vocab: Vocab, feature_dim: int, classifier: torch.nn.Linear | None) -> Decoder:
    """A new decoder as [model] says: GloVe word vectors, and the encoder's `classifier` for tags, if asked."""
    torch.manual_seed(cfg.train.seed)
    model_cfg = cfg.model
    if model_cfg.glove != "none":
        if model_cfg.glove not in ("frozen", "trained"):
            raise CaptionerError(f"[model] glove must be none, frozen or trained, not {model_cfg.glove!r}")
        if model_cfg.embed_dim != GLOVE_DIM:
            raise CaptionerError(f"[model] embed_dim must be {GLOVE_DIM} with GloVe vectors, not {model_cfg.embed_dim}")
    if model_cfg.tags and classifier is None:
        raise CaptionerError(f"[model] tags needs an encoder with an ImageNet classifier (efficientnet-lite0, 1 or 2), "
                             f"and {cfg.data.encoder} has none")
    decoder = Decoder(model_cfg, len(vocab), feature_dim, classifier.out_features if model_cfg.tags else 0)
    if model_cfg.tags:
        decoder.classifier.load_state_dict(classifier.state_dict())
    if model_cfg.glove != "none":
        vectors, _ = glove_vectors(vocab.words, cfg.train.seed)
        decoder.embedding.weight.data.copy_(vectors)
        decoder.embedding.weight.requires_grad_(model_cfg.glove == "trained")
    return decoder


def learning_rate(cfg: Config, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay from lr to min_lr over the whole run."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, total - t.warmup_steps))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))


def epoch_batches(pools: list[torch.Tensor], shares: list[float], counts: torch.Tensor, batch_captions: int,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's shuffled batches of photo indices, each of about `batch_captions` captions (whole photos).

    pools[i] holds the photos of corpus i that may be drawn and counts[p] the
    captions photo p brings. An epoch holds as many captions as the pools
    together, corpus i's share of them drawn from its pool without replacement
    (in as many fresh random orders as that takes): with one corpus, every photo once.
    """
    live = [(pool, share) for pool, share in zip(pools, shares) if share > 0 and len(pool)]
    total = sum(float(counts[pool].sum()) for pool, _ in live)
    drawn = []
    for pool, share in live:
        n = round(total * share / sum(s for _, s in live) * len(pool) / float(counts[pool].sum()))
        orders = [pool[torch.randperm(len(pool), generator=generator)] for _ in range(-(-n // len(pool)))]
        drawn.append(torch.cat(orders)[:n])
    photos = torch.cat(drawn)
    photos = photos[torch.randperm(len(photos), generator=generator)]
    batch = (counts[photos].cumsum(0) - 1) // batch_captions  # [n]: the batch each photo falls in
    return list(photos.split(batch.unique_consecutive(return_counts=True)[1].tolist()))


def loss_fn(cfg: Config, logits: torch.Tensor, attention: torch.Tensor | None, captions: torch.Tensor,
            norm: tuple[float, float, float] | None = None) -> torch.Tensor:
    """The mean word cross-entropy of `captions` (and the attention regulariser); with `norm`, the (tokens,
    captions) a data-parallel worker's part is averaged over instead (see parallel.Workers.part)."""
    target = captions[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=PAD_ID,
                           label_smoothing=cfg.train.label_smoothing, reduction="mean" if norm is None else "sum")
    loss = loss if norm is None else loss / norm[0]
    if cfg.model.kind == "attention" and cfg.train.attention_reg:
        mask = (target != PAD_ID).float()[..., None]  # [B, T, 1]
        coverage = (attention * mask).sum(1)  # [B, N]: how much each cell was looked at over the caption
        spread = ((1 - coverage) ** 2).mean() if norm is None else ((1 - coverage) ** 2).sum() / (
            norm[1] * coverage.shape[1])
        loss = loss + cfg.train.attention_reg * spread
    return loss


def xe_loss(cfg: Config, decoder: Decoder, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor,
            owner: torch.Tensor, chance: float, generator: torch.Generator,
            norm: tuple[float, float, float] | None = None) -> torch.Tensor:
    """Cross-entropy of one batch of captions [B, T], caption b of photo owner[b]; with scheduled
    sampling, each input word is the decoder's own guess with probability `chance`."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.bf16 and bf16_supported()):
        inputs = with_own_words(decoder, pooled, grid, captions, owner, chance, generator) if chance else captions
        logits, attention = decoder(pooled, grid, inputs, owner)
    return loss_fn(cfg, logits.float(), attention.float() if attention is not None else None, captions, norm)


def with_own_words(decoder: Decoder, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor,
                   owner: torch.Tensor, chance: float, generator: torch.Generator) -> torch.Tensor:
    """Scheduled sampling, in two passes: each input word after <start> is, with probability `chance`,
    replaced by the word the decoder itself predicts there from the true words before it."""
    with torch.no_grad():
        logits, _ = decoder(pooled, grid, captions, owner)  # [B, T - 1, V]
    guesses = word_logprobs(logits[:, :-1]).argmax(-1)
    words = captions[:, 1:-1]  # inputs after <start>; the last position is never an input
    swap = (torch.rand(words.shape, generator=generator) < chance) & (words != PAD_ID) & (words != END_ID)
    return torch.cat([captions[:, :1], torch.where(swap, guesses, words), captions[:, -1:]], 1)


def check_scst(t: TrainConfig) -> None:
    """Refuse self-critical settings that cannot run, before any epoch is spent."""
    if t.scst_start not in ("best", "last"):
        raise CaptionerError(f"[train] scst_start must be best or last, not {t.scst_start!r}")
    if t.scst_baseline not in ("mean", "greedy"):
        raise CaptionerError(f"[train] scst_baseline must be mean or greedy, not {t.scst_baseline!r}")
    if t.scst_baseline == "mean" and t.scst_samples < 2:
        raise CaptionerError("[train] scst_samples must be at least 2 with the mean baseline")


def scst_loss(cfg: Config, decoder: Decoder, pooled: torch.Tensor, grid: torch.Tensor, photos: list[int],
              cider: CiderD, vocab: Vocab, max_len: int, generator: torch.Generator):
    """Self-critical sequence training on one batch: returns the loss and each sample's reward [B * k].

    Each photo's k sampled captions are rewarded by CIDEr-D against its
    references; a caption's advantage is its reward minus the baseline (the mean
    of the photo's other samples, or its greedy caption's reward), and the loss
    is the advantage-weighted negative log-likelihood per word.
    """
    t, k = cfg.train, cfg.train.scst_samples
    words = lambda ids: [vocab.words[i] for i in ids if i not in (END_ID, PAD_ID)]  # noqa: E731
    owner = torch.arange(len(photos)).repeat_interleave(k)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.bf16 and bf16_supported()):
        samples = sample(decoder, pooled, grid, k, max_len, generator, t.scst_temperature)  # [B * k, T]
        sentences = [words(s) for s in samples.tolist()]
        rewards = torch.from_numpy(cider.scores([photos[o] for o in owner.tolist()], sentences))
        if t.scst_baseline == "greedy":
            greedy, _ = decode(decoder, pooled, grid, GREEDY.override(max_len=max_len))
            best = [words(hyps[0].tokens) for hyps in greedy]
            baseline = torch.from_numpy(cider.scores(photos, best)).repeat_interleave(k)
        else:
            by_photo = rewards.view(-1, k)
            baseline = ((by_photo.sum(1, keepdim=True) - by_photo) / (k - 1)).view(-1)
        captions = torch.cat([torch.full((len(samples), 1), START_ID), samples], 1)
        logits, _ = decoder(pooled, grid, captions, owner)
    mask = captions[:, 1:] != PAD_ID  # [B * k, T]: the words and <end>; padding has no probability
    logp = word_logprobs(logits, t.scst_temperature).gather(2, captions[:, 1:, None]).squeeze(2).where(mask, 0.0)
    loss = -((rewards - baseline)[:, None] * logp).sum() / mask.sum()
    return loss, rewards


def _save_checkpoint(path: Path, decoder: Decoder, opt: torch.optim.Optimizer, state: dict) -> None:
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in decoder.state_dict().items()}
    opt_state = opt.state_dict()
    for i, s in opt_state["state"].items():
        for k, v in s.items():
            tensors[f"opt.{i}.{k}"] = v.detach().reshape(-1) if v.dim() == 0 else v.detach().contiguous()
    tensors["rng"] = torch.get_rng_state()
    meta = {**state, "param_groups": opt_state["param_groups"]}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})


def _load_checkpoint(path: Path, decoder: Decoder, opt: torch.optim.Optimizer) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["state"])
    tensors = load_file(str(path))
    decoder.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict = {"state": {}, "param_groups": meta.pop("param_groups")}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            opt_state["state"].setdefault(int(i), {})[name] = value.reshape(()) if name == "step" else value
    opt.load_state_dict(opt_state)
    torch.set_rng_state(tensors["rng"])
    return meta


def plot_curve(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in log]
    xe = [r for r in log if "train_loss" in r]  # self-critical epochs have a reward instead
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["epoch"] for r in xe], [r["train_loss"] for r in xe], "o-", color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r["dev_cider"] for r in log], "s-", color="tab:red", label="dev CIDEr")
    ax2.set_ylabel("dev CIDEr (greedy)", color="tab:red")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def check_run(cfg: Config, resume: bool) -> None:
    """Refuse a run that cannot start: an existing run without `resume`, nothing to resume, bad settings."""
    out = Path(cfg.train.out)
    if (out / CHECKPOINT).exists() and not resume:
        raise CaptionerError(f"{out} already holds a training run: pass --resume to continue it, "
                             "or choose another [train] out folder")
    if resume and not (out / CHECKPOINT).exists():
        raise CaptionerError(f"{out / CHECKPOINT} does not exist: there is nothing to resume (start without --resume)")
    if cfg.train.scst_epochs:
        check_scst(cfg.train)


def train(cfg: Config, resume: bool = False, stop_after: int | None = None, progress: bool = True,
          workers: Workers | None = None) -> Path:
    """Train a decoder as `cfg` says; returns the folder of the model selected on the dev split.

    Writes into cfg.train.out: checkpoint.safetensors (every epoch, atomically),
    metrics.jsonl, curve.png and model/ (the best epoch by dev CIDEr). With
    `resume`, continues from the checkpoint exactly as if never stopped.
    `stop_after` ends this run after that many epochs (resume later).
    With `workers`, this process is one of several data-parallel workers (see
    parallel.py and raytrain.py): rank 0 chooses the epoch and writes every file.
    """
    out = Path(cfg.train.out)
    ckpt_path = out / CHECKPOINT
    check_run(cfg, resume)
    lead = workers is None or workers.rank == 0
    progress = progress and lead
    if cfg.train.threads and workers is None:
        torch.set_num_threads(cfg.train.threads)
    data = load_training(cfg.data, progress, workers.owns if workers else None)
    train_split, vocab, max_len = data.train, data.vocab, data.max_len
    classifier = load_encoder(cfg.data.encoder, cfg.data.input_size).classifier
    words = class_words(probabilities(classifier, train_split.pooled), train_split.references, vocab) \
        if classifier is not None else None  # tags.json: the caption word of each of the encoder's classes
    centres = confidence.centroids(train_split.pooled)  # where the training photos lie
    captions, owner = train_split.captions(vocab, max_len)
    lengths = (captions != PAD_ID).sum(1)
    counts = torch.bincount(owner, minlength=len(train_split.paths))  # captions per photo
    rows_of = owner.argsort(stable=True).split(counts.tolist())  # photo -> its caption rows
    pools = [torch.nonzero(data.source == i).squeeze(1) for i in range(len(data.shares))]
    # Self-critical training: the photos with enough references, their k samples counted as captions.
    scst_pools = [pool[counts[pool] >= cfg.train.scst_min_refs] for pool in pools]
    scst_counts = torch.full_like(counts, cfg.train.scst_samples)

    decoder = build_decoder(cfg, vocab, train_split.pooled.shape[1], classifier)
    learned = [p for p in decoder.parameters() if p.requires_grad]
    optimizer = lambda lr: torch.optim.Adam(learned, lr=lr, weight_decay=cfg.train.weight_decay)  # noqa: E731
    opt = optimizer(cfg.train.lr)
    state = {"epoch": 0, "step": 0, "best_cider": -1.0, "best_epoch": 0, "bad_epochs": 0, "scst_from": None,
             "config": cfg.to_dict()}
    if resume:
        state = _load_checkpoint(ckpt_path, decoder, opt)
        if state["config"] != cfg.to_dict():
            raise CaptionerError(f"{ckpt_path} was made with a different config: resume with the same config file")
    if lead:
        out.mkdir(parents=True, exist_ok=True)
    log_path = out / "metrics.jsonl"
    log = [json.loads(line) for line in log_path.read_text().splitlines()] if resume and log_path.exists() else []
    log = log[:state["epoch"]]  # an epoch logged after the last checkpoint is redone
    steps_per_epoch = math.ceil(len(owner) / cfg.train.batch_captions)
    total_steps = steps_per_epoch * cfg.train.epochs
    cider, cider_row = None, {}
    if cfg.train.scst_epochs:
        scored = torch.cat(scst_pools).tolist()
        if not scored:
            raise CaptionerError(f"no training photo has {cfg.train.scst_min_refs} references for self-critical "
                                 "training: lower [train] scst_min_refs")
        cider = CiderD([[r.split() for r in train_split.references[p]] for p in scored])
        cider_row = {p: row for row, p in enumerate(scored)}
    first = state["epoch"]
    while True:
        if state["scst_from"] is None and (state["epoch"] >= cfg.train.epochs
                                           or state["bad_epochs"] >= cfg.train.patience):
            if not cfg.train.scst_epochs:
                break
            if cfg.train.scst_start == "best":
                decoder.load_state_dict(load_file(str(out / "model" / "model.safetensors")))
            opt = optimizer(cfg.train.scst_lr)
            state.update(scst_from=state["epoch"], bad_epochs=0)
        if state["scst_from"] is not None and (state["epoch"] - state["scst_from"] >= cfg.train.scst_epochs
                                               or state["bad_epochs"] >= cfg.train.patience):
            break
        if stop_after is not None and state["epoch"] - first >= stop_after:
            break
        scst = state["scst_from"] is not None
        epoch = state["epoch"] + 1
        decoder.train(not scst)  # self-critical: no dropout, so sampling and scoring see one model
        generator = torch.Generator().manual_seed(cfg.train.seed * 10_000 + epoch)
        started, seen, loss_sum = time.time(), 0, 0.0
        last = (state["scst_from"] + cfg.train.scst_epochs) if scst else cfg.train.epochs
        bar = tqdm(epoch_batches(scst_pools, data.shares, scst_counts, cfg.train.batch_captions, generator) if scst
                   else epoch_batches(pools, data.shares, counts, cfg.train.batch_captions, generator),
                   desc=f"{'self-critical ' if scst else ''}epoch {epoch}/{last}", unit="batch",
                   disable=not progress, dynamic_ncols=True)
        for photos in bar:
            norm = None  # one worker: the batch's own means
            if workers:
                photos, norm = workers.part(photos, counts, lengths, rows_of)
            if not scst:
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg, state["step"], total_steps)
            opt.zero_grad(set_to_none=True)
            count, value = 0, 0.0
            if len(photos):  # a worker's part of a small batch may be empty
                pooled, grid = train_split.pooled[photos], train_split.grid[photos]
                idx = torch.cat([rows_of[p] for p in photos.tolist()])  # the batch's reference captions
                which = torch.repeat_interleave(torch.arange(len(photos)), counts[photos])  # caption -> photo
                references = captions[idx, :int(lengths[idx].max())]
                if scst:
                    loss, rewards = scst_loss(cfg, decoder, pooled, grid, [cider_row[p] for p in photos.tolist()],
                                              cider, vocab, max_len, generator)
                    if norm:  # a part's mean, weighed by its share of the batch's photos
                        loss = loss * len(photos) / norm[2]
                    if cfg.train.scst_xe:
                        loss = loss + cfg.train.scst_xe * xe_loss(cfg, decoder, pooled, grid, references, which, 0.0,
                                                                  generator, norm)
                    count, value = len(rewards), float(rewards.sum())  # the mean reward is what is shown
                else:
                    chance = cfg.train.scheduled_sampling * state["step"] / total_steps
                    loss = xe_loss(cfg, decoder, pooled, grid, references, which, chance, generator, norm)
                    count, value = len(idx), loss.item() * (norm[1] if norm else len(idx))
                loss.backward()
            if workers:
                workers.average_gradients(learned)
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.train.grad_clip)
            opt.step()
            state["step"] += 1
            seen += count
            loss_sum += value
            if seen:
                shown = {"reward": f"{loss_sum / seen:.3f}"} if scst else {"loss": f"{loss_sum / seen:.3f}"}
                bar.set_postfix(**shown, caps_s=f"{seen / (time.time() - started):.0f}")
        bar.close()
        if workers:
            loss_sum, seen = workers.sum(loss_sum, seen)
        dev = -1.0
        if lead:
            predictions = {name: caption_split(decoder, split, vocab, max_len) for name, split in data.dev.items()}
            scores = {name: dev_cider(predictions[name], split.references) for name, split in data.dev.items()}
            dev = sum(scores.values()) / len(scores)  # what chooses the epoch
            sample = next(iter(predictions.values()))[0]
            record = {"epoch": epoch, "phase": "scst" if scst else "xe",
                      "train_reward" if scst else "train_loss": loss_sum / seen, "dev_cider": dev, "dev": scores,
                      "lr": opt.param_groups[0]["lr"], "seconds": time.time() - started,  # training and dev decoding
                      "captions_per_s": seen / (time.time() - started), "sample": sample}
        if workers:
            dev = workers.from_first(dev)
        if dev > state["best_cider"]:
            state.update(best_cider=dev, best_epoch=epoch, bad_epochs=0)
            if lead:
                save_model(out / "model", Model(decoder, vocab, cfg.data.encoder, cfg.data.input_size, cfg.decode,
                                                words), card=training_card(cfg, record))
                confidence.save(out / "model", centres)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        if not lead:
            workers.from_first(0.0)  # wait for rank 0's checkpoint (and model) before the next epoch may read them
            continue
        _save_checkpoint(ckpt_path, decoder, opt, state)
        log.append(record)
        write_atomic(log_path, "".join(json.dumps(r) + "\n" for r in log))
        plot_curve(log, out / "curve.png")
        if progress:
            epochs_left = last - epoch + (0 if scst else cfg.train.scst_epochs)
            left = epochs_left * sum(r["seconds"] for r in log) / len(log)
            trained = f"reward {loss_sum / seen:.3f}" if scst else f"loss {loss_sum / seen:.3f}"
            each = f" ({', '.join(f'{name} {v:.1f}' for name, v in scores.items())})" if len(scores) > 1 else ""
            tqdm.write(f"epoch {epoch}: {trained}, dev CIDEr {dev:.1f}{each} "
                       f"(best {state['best_cider']:.1f} at epoch {state['best_epoch']}), "
                       f"at most {left / 60:.0f} min left; e.g. \"{sample}\"")
        if workers:
            workers.from_first(0.0)
    return out / "model"


def training_card(cfg: Config, record: dict) -> str:
    """A first model card: how this model was trained; `captioner evaluate` adds test metrics."""
    return (f"# captioner model\n\n"
            f"- encoder: {cfg.data.encoder} at {cfg.data.input_size}x{cfg.data.input_size} (frozen)\n"
            f"- decoder: {cfg.model.kind}, {json.dumps(asdict(cfg.model))}\n"
            f"- corpora: {', '.join(f'{c.prepared} (share {c.share:g})' for c in cfg.data.corpora)}; "
            f"dev: {', '.join(cfg.data.dev)}\n"
            f"- selected at epoch {record['epoch']} by dev CIDEr (greedy) {record['dev_cider']:.1f}\n"
            f"- training config: {json.dumps(cfg.to_dict())}\n")
