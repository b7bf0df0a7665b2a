"""Training end to end on ~50 Flickr8k photos: every decoder learns, resume is exact, the model folder loads."""
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from captioner.data.corpus import load_prepared, prepare
from captioner.errors import CaptionerError
from captioner.models.decoders import KINDS
from captioner.models.device import resolve
from captioner.models.folder import load_model
from captioner.training.config import config_from_dict
from captioner.training.train import CHECKPOINT, train

TRAIN, DEV = 40, 10


@pytest.fixture(scope="module")
def mini_corpus(tmp_path_factory, request) -> Path:
    """A Flickr8k-format corpus of 50 real photos (40 train, 10 dev), prepared, with lite0 features cached."""
    root = request.getfixturevalue("flickr8k_root")
    src = tmp_path_factory.mktemp("flickr8k-mini")
    names = (root / "Flickr_8k.trainImages.txt").read_text().split()[:TRAIN]
    dev = (root / "Flickr_8k.devImages.txt").read_text().split()[:DEV]
    (src / "Images").mkdir()
    for name in names + dev:
        shutil.copy(root / "Images" / name, src / "Images" / name)
    keep = set(names + dev)
    lines = [line for line in (root / "Flickr8k.token.txt").read_text().splitlines()
             if line.split("#")[0] in keep]
    (src / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (src / "Flickr_8k.trainImages.txt").write_text("\n".join(names) + "\n")
    (src / "Flickr_8k.devImages.txt").write_text("\n".join(dev) + "\n")
    (src / "Flickr_8k.testImages.txt").write_text("")
    out = tmp_path_factory.mktemp("prepared")
    prepare("flickr8k", src, out, min_count=2)
    return out


def tiny_config(corpus: Path, out: Path, kind: str, **train) -> dict:
    return {
        "data": {"prepared": str(corpus), "encoder": "efficientnet-lite0", "cache": str(corpus / "features")},
        "model": {"kind": kind, "embed_dim": 32, "hidden_dim": 48, "attention_dim": 16, "dropout": 0.1,
                  "layers": 2, "heads": 4, "ffn_dim": 64},
        "train": {"out": str(out), "epochs": 4, "batch_captions": 40, "lr": 3e-3, "min_lr": 1e-3, "warmup_steps": 1,
                  "patience": 10, "seed": 1, **train},
        "decode": {"beam": 2, "max_len": 12},
    }


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_decoder_learns(mini_corpus, tmp_path, kind):
    cfg = config_from_dict(tiny_config(mini_corpus, tmp_path / kind, kind, scheduled_sampling=0.25))
    model_dir = train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / kind / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.5, log
    assert (tmp_path / kind / "curve.png").stat().st_size > 1000
    model = load_model(model_dir)
    assert model.decoder.cfg.kind == kind and model.encoder == "efficientnet-lite0"
    assert (model_dir / "MODEL_CARD.md").read_text().startswith("# captioner model")


def test_glove_embedding_frozen(mini_corpus, tmp_path):
    values = tiny_config(mini_corpus, tmp_path / "glove", "merge", epochs=1)
    values["model"] |= {"glove": "frozen", "embed_dim": 50}
    cfg = config_from_dict(values)
    from captioner.models.glove import glove_vectors

    model = load_model(train(cfg, progress=False))
    vectors, found = glove_vectors(model.vocab.words, seed=1)  # the config's seed
    assert found > 0.9 * (len(model.vocab) - 4)
    assert torch.equal(model.decoder.embedding.weight, vectors)  # frozen: GloVe as loaded


def assert_same_checkpoints(a_run: Path, b_run: Path) -> None:
    a, b = load_file(str(a_run / CHECKPOINT)), load_file(str(b_run / CHECKPOINT))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_is_exact(mini_corpus, tmp_path):
    """Two epochs in one run, or one epoch, a stop, and --resume: the same weights to the bit."""
    straight = config_from_dict(tiny_config(mini_corpus, tmp_path / "straight", "attention", epochs=2))
    train(straight, progress=False)
    stopped = config_from_dict(tiny_config(mini_corpus, tmp_path / "stopped", "attention", epochs=2))
    train(stopped, stop_after=1, progress=False)
    assert len((tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()) == 1
    with pytest.raises(CaptionerError, match="--resume"):
        train(stopped, progress=False)
    train(stopped, resume=True, progress=False)
    assert_same_checkpoints(tmp_path / "straight", tmp_path / "stopped")
    log = (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def test_a_run_on_device_cpu_is_the_default_run_and_a_missing_device_stops_it_first(mini_corpus, tmp_path):
    """device="cpu" trains as the default does here, to the bit, with self-critical sampling; an unavailable
    device is refused before anything is written."""
    values = dict(epochs=1, scst_epochs=1, scst_samples=2, scheduled_sampling=0.5)
    train(config_from_dict(tiny_config(mini_corpus, tmp_path / "default", "attention", **values)), progress=False)
    train(config_from_dict(tiny_config(mini_corpus, tmp_path / "cpu", "attention", **values)), progress=False,
          device="cpu")
    assert_same_checkpoints(tmp_path / "default", tmp_path / "cpu")
    if torch.cuda.is_available():
        return
    with pytest.raises(CaptionerError, match="^device cuda is not available here"):
        train(config_from_dict(tiny_config(mini_corpus, tmp_path / "gpu", "attention")), progress=False, device="cuda")
    assert not (tmp_path / "gpu").exists()


def test_self_critical_training_follows_the_best_cross_entropy_epoch(mini_corpus, tmp_path):
    cfg = config_from_dict(tiny_config(mini_corpus, tmp_path / "run", "transformer", epochs=2, scst_epochs=2,
                                       scst_lr=1e-3, scst_samples=3))
    model_dir = train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"]) for r in log] == [(1, "xe"), (2, "xe"), (3, "scst"), (4, "scst")]
    assert all(0 <= r["train_reward"] < 10 for r in log[2:])  # mean CIDEr-D of the samples, toolkit scale
    best = max(log, key=lambda r: r["dev_cider"])
    assert f"selected at epoch {best['epoch']} " in (model_dir / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize("start", ["best", "last"])
def test_self_critical_training_starts_from_the_chosen_cross_entropy_epoch(mini_corpus, tmp_path, start):
    """Cross-entropy ends at its first epoch without a better dev CIDEr (patience 1), so its best and last
    weights differ; at a zero learning rate the self-critical epoch keeps the weights it started from."""
    values = dict(epochs=10, patience=1, scst_samples=2, scst_lr=0.0)
    train(config_from_dict(tiny_config(mini_corpus, tmp_path / "xe", "merge", **values)), progress=False)
    last = load_file(str(tmp_path / "xe" / CHECKPOINT))
    best = load_file(str(tmp_path / "xe" / "model" / "model.safetensors"))
    assert not all(torch.equal(last[f"model.{k}"], v) for k, v in best.items())
    cfg = config_from_dict(tiny_config(mini_corpus, tmp_path / "scst", "merge", **values, scst_epochs=1,
                                       scst_start=start))
    train(cfg, progress=False)
    after = load_file(str(tmp_path / "scst" / CHECKPOINT))
    expected = best if start == "best" else {k[len("model."):]: v for k, v in last.items() if k.startswith("model.")}
    assert all(torch.equal(after[f"model.{k}"], v) for k, v in expected.items())


@pytest.mark.parametrize("setting, message", [
    ({"scst_start": "first"}, "scst_start must be best or last"),
    ({"scst_baseline": "max"}, "scst_baseline must be mean or greedy"),
    ({"scst_samples": 1}, "scst_samples must be at least 2"),
])
def test_self_critical_settings_are_refused_before_any_epoch(mini_corpus, tmp_path, setting, message):
    cfg = config_from_dict(tiny_config(mini_corpus, tmp_path / "run", "merge", scst_epochs=1, **setting))
    with pytest.raises(CaptionerError, match=message):
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_is_exact_across_the_switch_to_self_critical(mini_corpus, tmp_path):
    values = dict(epochs=1, scst_epochs=1, scst_samples=2, scst_baseline="greedy")
    train(config_from_dict(tiny_config(mini_corpus, tmp_path / "straight", "attention", **values)), progress=False)
    stopped = config_from_dict(tiny_config(mini_corpus, tmp_path / "stopped", "attention", **values))
    train(stopped, stop_after=1, progress=False)
    train(stopped, resume=True, progress=False)
    assert_same_checkpoints(tmp_path / "straight", tmp_path / "stopped")


def test_self_critical_loss_raises_the_reward():
    """Sampled captions that score above their photo's baseline become more likely: the mean reward climbs."""
    from captioner.data.text import Vocab
    from captioner.models.decoders import Decoder, DecoderConfig
    from captioner.training.cider import CiderD
    from captioner.training.scst import scst_loss

    vocab = Vocab.build([["a", "dog", "runs", "on", "grass", "cat", "sits", "red", "car"]] * 5, min_count=1)
    cider = CiderD([[["a", "dog", "runs", "on", "grass"]], [["a", "red", "car"]], [["a", "cat", "sits"]]])
    cfg = config_from_dict({"train": {"scst_samples": 8, "bf16": False}})
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(kind="transformer", embed_dim=16, hidden_dim=16, heads=2, ffn_dim=32, layers=1,
                                    dropout=0.0), len(vocab), 8).eval()
    pooled, grid = torch.eye(3, 8), torch.eye(3, 8)[:, None].expand(3, 4, 8)
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    rewards = []
    for _ in range(60):
        loss, r = scst_loss(cfg, decoder, pooled, grid, [0, 1, 2], cider, vocab, 8, generator)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rewards.append(float(r.mean()))
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 1.0, rewards


def test_self_critical_moves_no_mass_to_tokens_never_sampled():
    """Samples never hold <pad>, <start> or <unk>, so the loss must give those tokens no gradient: otherwise
    pushing sampled words down (most samples score below their baseline) drains the mass into them."""
    from captioner.data.text import Vocab
    from captioner.models.decoders import Decoder, DecoderConfig
    from captioner.models.search import NEVER
    from captioner.training.cider import CiderD
    from captioner.training.scst import scst_loss

    vocab = Vocab.build([["a", "dog", "runs", "on", "grass", "cat", "sits"]] * 5, min_count=1)
    cider = CiderD([[["a", "dog", "runs", "on", "grass"]], [["a", "cat", "sits"]]])
    cfg = config_from_dict({"train": {"scst_samples": 6, "scst_baseline": "greedy", "bf16": False}})
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(kind="attention", embed_dim=8, hidden_dim=8, attention_dim=4, dropout=0.0),
                      len(vocab), 4).eval()
    loss, _ = scst_loss(cfg, decoder, torch.randn(2, 4), torch.randn(2, 3, 4), [0, 1], cider, vocab, 6,
                        torch.Generator().manual_seed(0))
    loss.backward()
    bias = decoder.net.out.bias.grad  # [V]: the summed gradient of every step's logit of each word
    assert torch.all(bias[NEVER] == 0)
    assert bias.abs().sum() > 0


def test_scheduled_sampling_feeds_the_models_own_words():
    from captioner.data.text import END_ID, PAD_ID, START_ID
    from captioner.models.decoders import Decoder, DecoderConfig
    from captioner.training.train import with_own_words

    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(kind="attention", embed_dim=8, hidden_dim=8, attention_dim=4, dropout=0.0), 30, 6)
    pooled, grid = torch.randn(2, 6), torch.randn(2, 5, 6)
    captions = torch.tensor([[START_ID, 7, 8, 9, END_ID, PAD_ID], [START_ID, 10, 11, 12, 13, END_ID]])
    owner = torch.tensor([0, 1])
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(with_own_words(decoder, pooled, grid, captions, owner, 0.0, generator), captions)
    own = with_own_words(decoder, pooled, grid, captions, owner, 1.0, generator)
    guesses = decoder(pooled, grid, captions, owner)[0].argmax(-1)  # [2, 5]: the word predicted at each input
    assert torch.equal(own[0, 1:4], guesses[0, :3]) and torch.equal(own[1, 1:5], guesses[1, :4])
    assert torch.equal(own[:, 0], captions[:, 0])  # <start>, <end> and padding stay where they are
    assert own[0, 4] == END_ID and own[0, 5] == PAD_ID and own[1, 5] == END_ID


def test_resume_refuses_another_config(mini_corpus, tmp_path):
    cfg = config_from_dict(tiny_config(mini_corpus, tmp_path / "run", "merge", epochs=2))
    train(cfg, stop_after=1, progress=False)
    changed = config_from_dict(tiny_config(mini_corpus, tmp_path / "run", "merge", epochs=2, lr=1e-2))
    with pytest.raises(CaptionerError, match="different config"):
        train(changed, resume=True, progress=False)


def test_unknown_setting_is_a_clear_error(tmp_path):
    with pytest.raises(CaptionerError, match="unknown setting 'lr_rate'"):
        config_from_dict({"train": {"lr_rate": 1}})
    with pytest.raises(CaptionerError, match=r"unknown section \[optim\]"):
        config_from_dict({"optim": {}})


def test_an_unknown_decoder_kind_is_said_before_any_data_is_read(tmp_path):
    cfg = config_from_dict(tiny_config(tmp_path / "no-corpus-here", tmp_path / "run", "gru2"))
    with pytest.raises(CaptionerError, match="unknown decoder kind 'gru2': choose one of merge, inject, attention"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_evaluate_writes_scores_and_report(mini_corpus, tmp_path):
    cfg = config_from_dict(tiny_config(mini_corpus, tmp_path / "run", "attention", epochs=1))
    model_dir = train(cfg, progress=False)
    from captioner.evaluation.evaluate import evaluate

    result = evaluate(model_dir, mini_corpus, "dev", beam=2, out=tmp_path / "eval", progress=False)
    scores = result["scores"]
    assert set(scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "photos"}
    assert scores["photos"] == DEV and 0 <= scores["BLEU-1"] <= 100
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["meta"]["split"] == "dev" and report["meta"]["beam"] == 2
    assert report["meta"]["device"] == str(resolve())  # where it was captioned: the CPU here
    assert len(report["samples"]) == DEV and all(s["references"] for s in report["samples"])
    assert "<img" in (tmp_path / "eval" / "report.html").read_text()


def test_align_adds_an_embedding_chosen_on_dev(mini_corpus, tmp_path, capsys):
    from captioner.cli import main
    from captioner.data.images import file_sha256
    from captioner.models.embedding import FILE, SETTINGS_FILE, load, record, save
    from captioner.training.align import choose_rerank

    cfg = config_from_dict(tiny_config(mini_corpus, tmp_path / "run", "attention", epochs=1))
    model_dir = train(cfg, progress=False)
    assert main(["align", "--model", str(model_dir), "--data", str(mini_corpus), "--epochs", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    embedding = load(model_dir)
    assert (model_dir / FILE).is_file() and vars(embedding.cfg) == result["config"]
    assert [e["epoch"] for e in result["epochs"]] == [1, 2] and result["train_config"]["epochs"] == 2
    trials = result["dev_trials"]
    assert all(t["median_rank"] >= 1 and 0 <= t["R@1"] <= t["R@5"] <= t["R@10"] <= 100 for t in trials)
    first_stage = [t for t in trials if not t["rerank_pool"]]
    assert embedding.cfg.blend in {t["blend"] for t in first_stage} and len(first_stage) == 8 + 4  # + tag weights
    assert embedding.cfg.tag_weight in {t["tag_weight"] for t in first_stage}
    assert (embedding.cfg.rerank_pool, embedding.cfg.rerank_weight) == choose_rerank(trials)
    assert -1 <= embedding.cfg.weak_score <= 1

    # Retuning chooses the settings again from the same grid and rewrites search.json alone: the towers' file,
    # and so the model id every gallery indexed with it records, stays byte for byte
    embedding.cfg.blend, embedding.cfg.weak_score = 0.123, 0.9
    save(model_dir, embedding, record(model_dir))
    towers = file_sha256(model_dir / FILE)
    assert main(["align", "--model", str(model_dir), "--data", str(mini_corpus), "--retune", "--json", "-q"]) == 0
    again = json.loads(capsys.readouterr().out)
    retuned = load(model_dir)
    assert again["before"]["blend"] == 0.123 and retuned.cfg.blend in {t["blend"] for t in first_stage}
    assert vars(retuned.cfg) == again["config"] and -1 <= retuned.cfg.weak_score < 0.9
    assert json.loads((model_dir / SETTINGS_FILE).read_text())["blend"] == retuned.cfg.blend
    assert file_sha256(model_dir / FILE) == towers and record(model_dir)["epochs"]


def test_an_embedding_saved_before_search_json_keeps_the_settings_in_its_file(tmp_path):
    from safetensors.torch import save_file

    from captioner.models.embedding import FILE, SETTINGS_FILE, Embedding, RetrievalConfig, load, save

    cfg = RetrievalConfig(width=32, heads=2, blend=0.42, tag_weight=0.3, weak_score=0.25)
    save(tmp_path, Embedding(cfg, feature_dim=8, cells=4))
    assert load(tmp_path).cfg == cfg
    (tmp_path / SETTINGS_FILE).unlink()  # the layout of older folders: every setting in the towers' metadata
    state = {k: v.contiguous() for k, v in Embedding(cfg, feature_dim=8, cells=4).state_dict().items()}
    save_file(state, str(tmp_path / FILE), metadata={"format": "2", "config": json.dumps(vars(cfg))})
    assert load(tmp_path).cfg == cfg


def test_captions_worded_alike_share_the_contrastive_target_between_their_photos():
    import math

    import torch.nn.functional as F

    from captioner.models.embedding import Embedding, RetrievalConfig
    from captioner.training.align import contrastive_loss, wordings

    assert wordings(["A dog runs.", "the dog runs", "a dog runs fast", "Dog runs"]).tolist() == [0, 0, 1, 0]
    embedding = Embedding(RetrievalConfig(width=16, heads=2), feature_dim=8, cells=4)
    torch.manual_seed(0)
    t, v = F.normalize(torch.randn(4, 384), dim=-1), F.normalize(torch.randn(4, 384), dim=-1)
    photo = torch.tensor([0, 0, 1, 2])  # captions 0 and 1 are of one photo
    # Without wordings (or all different): InfoNCE over the other photos, the same photo's other caption left out
    logits = embedding.log_scale.exp() * (t @ v.T)
    twin = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    target = torch.arange(4)
    expected = (F.cross_entropy(logits.masked_fill(twin, -math.inf), target)
                + F.cross_entropy(logits.T.masked_fill(twin, -math.inf), target)) / 2
    assert torch.allclose(contrastive_loss(embedding, t, v, photo, 0.0), expected, atol=1e-5)
    assert torch.allclose(contrastive_loss(embedding, t, v, photo, 0.5, torch.tensor([0, 1, 2, 3])),
                          contrastive_loss(embedding, t, v, photo, 0.5), atol=1e-6)
    # Captions 2 and 3 are worded alike: each lying nearest the other's photo is much less of a mistake
    t[2], t[3] = v[3], v[2]
    alike = torch.tensor([0, 1, 2, 2])
    for hardest in (0.0, 0.5):
        assert contrastive_loss(embedding, t, v, photo, hardest, alike) < contrastive_loss(embedding, t, v, photo,
                                                                                           hardest)


def test_the_smallest_rerank_pool_within_a_point_of_the_best_is_chosen():
    from captioner.training.align import choose_rerank

    def trial(pool, weight, r1):
        return {"blend": 0.8, "rerank_pool": pool, "rerank_weight": weight, "R@1": r1, "R@5": 50.0, "R@10": 60.0}

    trials = [trial(0, 0.0, 30.0), trial(30, 0.02, 20.0), trial(30, 0.05, 20.5), trial(100, 0.02, 21.4)]
    assert choose_rerank(trials) == (30, 0.05)
    assert choose_rerank(trials + [trial(100, 0.05, 21.6)]) == (100, 0.05)


def test_an_epoch_draws_each_corpus_by_its_share_in_batches_of_captions():
    from captioner.training.train import epoch_batches

    counts = torch.tensor([5] * 40 + [1] * 100)  # corpus 0: 40 photos x 5 captions; corpus 1: 100 x 1
    pools = [torch.arange(40), torch.arange(40, 140)]
    generator = torch.Generator().manual_seed(0)
    one = epoch_batches(pools[:1], [1.0], counts, 20, generator)  # one corpus: every photo once, 4 per batch
    assert sorted(torch.cat(one).tolist()) == list(range(40)) and {len(b) for b in one} == {4}
    mixed = epoch_batches(pools, [1.0, 1.0], counts, 20, generator)  # 300 captions: 150 from each corpus
    drawn = torch.cat(mixed)
    assert (drawn < 40).sum() == 30 and (drawn >= 40).sum() == 150
    assert len(set(drawn[drawn >= 40].tolist())) == 100  # 150 draws of 100 photos: each at least once
    sizes = [int(counts[b].sum()) for b in mixed]
    assert all(abs(n - 20) < 5 for n in sizes[:-1]) and sum(sizes) == 300  # photos are never split
    only_first = epoch_batches(pools, [1.0, 0.0], counts, 20, generator)  # share 0: never trained on
    assert int(torch.cat(only_first).max()) < 40


def single_caption_corpus(root: Path, flickr8k_root: Path, tmp_path_factory) -> Path:
    """A corpus of 60 of Flickr8k's photos with one caption each (the first), as an img2dataset folder."""
    names = (flickr8k_root / "Flickr_8k.trainImages.txt").read_text().split()[TRAIN:TRAIN + 60]
    first = {}
    for line in (flickr8k_root / "Flickr8k.token.txt").read_text().splitlines():
        key, caption = line.split("\t")
        first.setdefault(key.split("#")[0], caption)
    for i, name in enumerate(names):
        (root / "00000").mkdir(parents=True, exist_ok=True)
        shutil.copy(flickr8k_root / "Images" / name, root / "00000" / f"{i:09d}.jpg")
        (root / "00000" / f"{i:09d}.txt").write_text(first[name])
    out = tmp_path_factory.mktemp("single-prepared")
    prepare("img2dataset", root, out, min_count=2)
    return out


def test_training_on_two_corpora_with_a_dev_set_kept_apart(mini_corpus, flickr8k_root, tmp_path, tmp_path_factory):
    """Five-caption and one-caption photos train together, one vocabulary from both train splits, the epoch
    chosen by the mean dev CIDEr of two dev sets; self-critical epochs only on photos with 5 references."""
    from captioner.features.splits import load_training

    single = single_caption_corpus(tmp_path_factory.mktemp("single"), flickr8k_root, tmp_path_factory)
    values = tiny_config(mini_corpus, tmp_path / "run", "attention", epochs=2, scst_epochs=1, scst_samples=2,
                         scst_min_refs=5)
    values["data"] = {"corpora": [{"prepared": str(mini_corpus), "share": 0.5},
                                  {"prepared": str(single), "share": 0.5}],
                      "dev": [str(mini_corpus), str(single)], "encoder": "efficientnet-lite0",
                      "cache": str(tmp_path / "features")}
    cfg = config_from_dict(values)
    data = load_training(cfg.data, progress=False)
    single_train = [im for im in load_prepared(single).images if im["split"] == "train"]
    assert len(data.train.paths) == TRAIN + len(single_train) and data.source.tolist().count(1) == len(single_train)
    counted = Counter(w for refs in data.train.references for r in refs for w in r.split())
    assert data.vocab.words[4:] == sorted((w for w, n in counted.items() if n >= 2), key=lambda w: (-counted[w], w))
    assert set(data.dev) == {mini_corpus.name, single.name}
    model_dir = train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["xe", "xe", "scst"]
    for r in log:
        assert set(r["dev"]) == {mini_corpus.name, single.name}
        assert r["dev_cider"] == pytest.approx(sum(r["dev"].values()) / 2)
    assert load_model(model_dir).vocab.words == data.vocab.words
    card = (model_dir / "MODEL_CARD.md").read_text()
    assert f"{mini_corpus} (share 0.5), {single} (share 0.5)" in card


def test_self_critical_training_needs_photos_with_enough_references(mini_corpus, tmp_path):
    cfg = config_from_dict(tiny_config(mini_corpus, tmp_path / "run", "merge", epochs=1, scst_epochs=1,
                                       scst_samples=2, scst_min_refs=6))
    with pytest.raises(CaptionerError, match="no training photo has 6 references for self-critical training"):
        train(cfg, progress=False)


@pytest.mark.parametrize("data, message", [
    ({"prepared": "a", "corpora": [{"prepared": "b"}]}, "not both"),
    ({"corpora": [{"share": 1.0}]}, "the setting 'prepared' is missing"),
    ({"corpora": [{"prepared": "a", "share": 0.0}]}, "at least one must be above 0"),
    ({"corpora": [{"prepared": "a", "weight": 1.0}]}, "unknown setting 'weight'"),
])
def test_corpus_settings_are_checked(data, message):
    with pytest.raises(CaptionerError, match=message):
        config_from_dict({"data": data})


def test_training_writes_tag_words_and_centroids_and_calibrate_fits_the_confidence(mini_corpus, tmp_path, capsys):
    from captioner.cli import main
    from captioner.models import confidence

    cfg = config_from_dict(tiny_config(mini_corpus, tmp_path / "run", "attention", epochs=1))
    model_dir = train(cfg, progress=False)
    model = load_model(model_dir)
    assert len(model.class_words) == 1000 and set(model.class_words) - {""} <= set(model.vocab.words)
    centres, regression = confidence.load(model_dir)
    assert centres.shape == (min(confidence.CENTROIDS, TRAIN), 1280) and regression is None
    assert main(["calibrate", "--model", str(model_dir), "--data", str(mini_corpus), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    check = result["check"][mini_corpus.name]
    assert check["photos"] == DEV and 0 <= check["below_low"] <= 1
    assert set(check["levels"]) == {"plain", "probably", "not sure"}
    assert abs(sum(level["share"] for level in check["levels"].values()) - 1) < 0.01
    assert abs(check["levels"]["not sure"]["share"] - check["below_low"]) < 0.01
    assert set(result["weights"]) == set(confidence.FEATURES)
    assert confidence.LOW <= result["plain"] <= 1 and confidence.load(model_dir)[1].plain == result["plain"]


def test_a_decoder_with_tags_keeps_the_encoders_classifier(mini_corpus, tmp_path, lite0):
    values = tiny_config(mini_corpus, tmp_path / "run", "attention", epochs=1)
    values["model"]["tags"] = True
    model = load_model(train(config_from_dict(values), progress=False))
    assert model.decoder.classes == 1000
    assert torch.equal(model.decoder.classifier.weight, lite0.classifier.weight)
    values["data"]["encoder"] = "dinov2-vits14"
    with pytest.raises(CaptionerError, match="tags needs an encoder with an ImageNet classifier"):
        from captioner.training.train import build_decoder
        build_decoder(config_from_dict(values), model.vocab, 384, None)


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_self_critical_epochs_add_the_cross_entropy_share_asked_for(mini_corpus, tmp_path, monkeypatch, share):
    import captioner.training.train as training

    calls = []
    real = training.xe_loss
    monkeypatch.setattr(training, "xe_loss", lambda *a, **k: calls.append(a[6]) or real(*a, **k))  # chance
    cfg = config_from_dict(tiny_config(mini_corpus, tmp_path / "run", "merge", epochs=1, scst_epochs=1,
                                       scst_samples=2, scst_xe=share))
    train(cfg, progress=False)
    xe_batches = -(-TRAIN * 5 // 40)  # cross-entropy epoch: 40 captions a batch
    scst_batches = len(calls) - xe_batches
    assert scst_batches == (-(-TRAIN * 2 // 40) if share else 0)  # self-critical: 20 photos x 2 samples a batch
    assert all(chance == 0.0 for chance in calls[xe_batches:])  # references as written, never the model's words
