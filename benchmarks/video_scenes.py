"""Scene changes on videos made for the purpose (benchmarks/make_videos.py): choose SceneConfig on some, report
on others.

    python benchmarks/video_scenes.py tune --videos /tmp/scene-videos/dev
    python benchmarks/video_scenes.py tune --videos /tmp/scene-videos/dev --every 0.5
    python benchmarks/video_scenes.py report --videos /tmp/scene-videos/test-random /tmp/scene-videos/test-similar

`tune` samples every video once (every --every seconds, the shipped model's encoder), then replays
`SceneFinder` on the stored samples for every setting of a grid (SceneConfig's cut, drift and colour), and
prints how each does: the share of true changes found within 1 s (cuts and dissolves apart) and the share of
the changes it found that are false. The chosen setting is the most robust: the one whose worst found x
(1 - false) over its neighbours in the grid is best (the middle one of those that tie). Then it prints the
chosen setting with each --settle.

`report` runs `captioner.video.scenes` itself (SceneConfig as shipped) on each video, scores its changes the same
way, and compares each scene's caption with the caption of the photo it shows (the photo shown longest during
the scene; `Captioner.caption` on the photo file): the same sentence, close (their content words' F1 at least
0.5), and the CIDEr-D of both against the photo's five human captions.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from captioner.captioning import Captioner
from captioner.data.text import clean
from captioner.evaluation.metrics import photo_cider
from captioner.video.scenes import Look, SceneConfig, SceneFinder, scenes, thumbnail
from captioner.video.sources import Sample, parse_source, samples

ROOT = Path(__file__).resolve().parents[1]
FLICKR8K = ROOT.parent / "shared" / "data" / "flickr8k"
WITHIN = 1.0  # a change is found when a scene starts within this many seconds of it
FUNCTION_WORDS = {"a", "an", "the", "is", "are", "of", "in", "on", "at", "with", "and", "to", "its", "his", "her",
                  "their", "while", "for", "by", "from", "into", "near", "next", "top", "front", "some", "it", "as"}


def videos_in(folders: list[str]) -> list[tuple[Path, dict]]:
    found = []
    for folder in folders:
        for truth in sorted(Path(folder).glob("*.json")):
            video = truth.with_suffix(".mp4")
            if video.exists():
                found.append((video, json.loads(truth.read_text())))
    if not found:
        raise SystemExit(f"no videos with their truth in {folders}: make them with benchmarks/make_videos.py")
    return found


def score(found: list[float], changes: list[dict], span: bool = False) -> dict:
    """Matches detected starts to true changes one to one, nearest first, within WITHIN seconds of a change's
    time (a dissolve's middle) or, with `span`, of any moment of a dissolve."""
    def distance(f: float, c: dict) -> float:
        half = c["length"] / 2 if span else 0.0
        return max(0.0, abs(f - c["time"]) - half)

    pairs = sorted((distance(f, c), i, j) for i, f in enumerate(found) for j, c in enumerate(changes))
    used_found, used_true = set(), set()
    for gap, i, j in pairs:
        if gap <= WITHIN and i not in used_found and j not in used_true:
            used_found.add(i)
            used_true.add(j)
    kinds = {k: [j for j, c in enumerate(changes) if c["kind"] == k] for k in ("cut", "dissolve")}
    return {"changes": len(changes), "detected": len(found), "found": len(used_true),
            "false": len(found) - len(used_found), **{f"{k}s": len(js) for k, js in kinds.items()},
            **{f"{k}s_found": sum(j in used_true for j in js) for k, js in kinds.items()}}


def total(scores: list[dict]) -> dict:
    out = {k: sum(s[k] for s in scores) for k in scores[0]}
    out["found_%"] = round(100 * out["found"] / max(out["changes"], 1), 1)
    out["false_%"] = round(100 * out["false"] / max(out["detected"], 1), 1)
    out["cuts_found_%"] = round(100 * out["cuts_found"] / max(out["cuts"], 1), 1)
    out["dissolves_found_%"] = round(100 * out["dissolves_found"] / max(out["dissolves"], 1), 1)
    return out


def looks(captioner: Captioner, video: Path, every: float) -> list[Look]:
    """Every sample of the video as the scene finder sees it (times, unit vectors, thumbnails)."""
    size = captioner.encoder.spec.input_size
    taken = [s for s in samples(parse_source(video), every, size) if isinstance(s, Sample)]
    out = []
    for i in range(0, len(taken), 8):
        batch = taken[i:i + 8]
        pooled = captioner.encoder(np.stack([s.pixels for s in batch])).pooled
        units = torch.nn.functional.normalize(pooled.float(), dim=1).cpu().numpy()
        out += [Look(s.time, u, thumbnail(s.pixels)) for s, u in zip(batch, units)]
    return out


def starts(stored: list[Look], config: SceneConfig, every: float) -> list[float]:
    """Where `SceneFinder` begins scenes (after the first) on samples stored every `every` seconds."""
    finder = SceneFinder(config, every)
    return [end for ended in map(finder.add, stored) if ended for _, end in [ended]]


def tune(args: argparse.Namespace, captioner: Captioner) -> None:
    made = videos_in(args.videos)
    stored = [looks(captioner, video, args.every) for video, _ in made]
    within, across = [], []  # a sample's change from the one before, inside a shot and across a change
    for (video, truth), seen in zip(made, stored):
        edges = [(c["time"] - c["length"] / 2, c["time"] + c["length"] / 2) for c in truth["changes"]]
        for a, b in zip(seen, seen[1:]):
            spans = any(lo < b.time and a.time < hi or a.time < lo <= b.time for lo, hi in edges)
            (across if spans else within).append(1 - float(a.unit @ b.unit))
    print(json.dumps({"videos": len(made), "samples": sum(map(len, stored)),
                      "encoder_change_within_shots": {"median": round(statistics.median(within), 3),
                                                      "p99": round(float(np.percentile(within, 99)), 3),
                                                      "max": round(max(within), 3)},
                      "encoder_change_across_changes": {"min": round(min(across), 3),
                                                        "p10": round(float(np.percentile(across, 10)), 3),
                                                        "median": round(statistics.median(across), 3)}}))
    rows = {}
    for colour, cut, drift in itertools.product(args.colour, args.cut, args.drift):
        config = SceneConfig(cut=cut, drift=drift, colour=colour)
        result = total([score(starts(seen, config, args.every), truth["changes"])
                        for seen, (_, truth) in zip(stored, made)])
        rows[colour, cut, drift] = result["found_%"] * (100 - result["false_%"]) / 100
        print(json.dumps({"colour": colour, "cut": cut, "drift": drift,
                          **{k: result[k] for k in ("found_%", "false_%", "cuts_found_%", "dissolves_found_%")}}))
    # The most robust setting: the best worst-case over its neighbours in the grid (a setting on the grid's edge
    # has unmeasured neighbours, so it is not chosen); ties: the middle one.
    cuts, drifts = sorted(args.cut), sorted(args.drift)
    robust = {}
    for (colour, cut, drift), _ in rows.items():
        i, j = cuts.index(cut), drifts.index(drift)
        if 0 < i < len(cuts) - 1 and 0 < j < len(drifts) - 1:
            robust[colour, cut, drift] = min(rows[colour, a, b] for a in cuts[i - 1:i + 2] for b in drifts[j - 1:j + 2])
    best = max(robust.values())
    tied = sorted(key for key, value in robust.items() if value == best)
    colour, cut, drift = tied[(len(tied) - 1) // 2]
    print(json.dumps({"chosen": {"cut": cut, "drift": drift, "colour": colour}, "found_x_not_false": rows[colour, cut,
                      drift], "worst_of_its_neighbours": best, "settings_tied": len(tied)}))
    for settle in args.settle:  # how long a scene begun at a change must last before another change counts
        config = SceneConfig(cut=cut, drift=drift, colour=colour, settle=settle)
        result = total([score(starts(seen, config, args.every), truth["changes"])
                        for seen, (_, truth) in zip(stored, made)])
        print(json.dumps({"chosen": {"cut": cut, "drift": drift, "colour": colour}, "settle": settle,
                          **{k: result[k] for k in ("found_%", "false_%", "cuts_found_%", "dissolves_found_%")}}))


def content(text: str) -> set[str]:
    return set(clean(text)) - FUNCTION_WORDS


def f1(a: set[str], b: set[str]) -> float:
    both = len(a & b)
    return 2 * both / (len(a) + len(b)) if both else 0.0


def report(args: argparse.Namespace, captioner: Captioner) -> None:
    made = videos_in(args.videos)
    images = Path(args.flickr8k) / "Images"
    references: dict[str, list[str]] = {}
    for line in (Path(args.flickr8k) / "Flickr8k.token.txt").read_text().splitlines():
        key, _, caption = line.partition("\t")
        references.setdefault(key.split("#")[0], []).append(" ".join(clean(caption)))
    photos = sorted({shot["photo"] for _, truth in made for shot in truth["shots"]})
    own = {p: c.text for p, c in zip(photos, captioner.caption([images / p for p in photos]))}
    scores, spans, pairs, duration = [], [], [], 0.0
    for video, truth in made:
        found = list(scenes(captioner, video, every=args.every))
        duration += truth["duration"]
        scores.append(score([s.start for s in found[1:]], truth["changes"]))
        spans.append(score([s.start for s in found[1:]], truth["changes"], span=True))
        for s in found:
            overlap = [(min(s.end, sh["end"]) - max(s.start, sh["start"]), sh["photo"]) for sh in truth["shots"]]
            pairs.append((s.caption.text, max(overlap)[1]))
    result, within_span = total(scores), total(spans)
    same = sum(text == own[photo] for text, photo in pairs)
    close = sum(text != own[photo] and f1(content(text), content(own[photo])) >= 0.5 for text, photo in pairs)
    scene_cider = photo_cider([" ".join(clean(t)) for t, _ in pairs], [references[p] for _, p in pairs])
    photo_cider_ = photo_cider([" ".join(clean(own[p])) for _, p in pairs], [references[p] for _, p in pairs])
    print(json.dumps({
        "videos": len(made), "minutes": round(duration / 60, 1), "config": vars(SceneConfig()),
        **{k: result[k] for k in ("changes", "cuts", "dissolves", "detected", "found_%", "cuts_found_%",
                                  "dissolves_found_%", "false_%")},
        "dissolves_found_within_1s_of_any_moment_%": within_span["dissolves_found_%"],
        "scenes": len(pairs), "caption_same_%": round(100 * same / len(pairs), 1),
        "caption_close_%": round(100 * close / len(pairs), 1),
        "caption_same_or_close_%": round(100 * (same + close) / len(pairs), 1),
        "cider_d_scene_captions": round(100 * float(scene_cider.mean()), 1),
        "cider_d_photo_captions": round(100 * float(photo_cider_.mean()), 1),
    }, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["tune", "report"])
    parser.add_argument("--videos", nargs="+", required=True, help="folders of VIDEO.mp4 with VIDEO.json")
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--flickr8k", default=str(FLICKR8K), help="the Flickr8k folder (report: photos, captions)")
    parser.add_argument("--cut", type=float, nargs="+", default=[0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6])
    parser.add_argument("--drift", type=float, nargs="+", default=[0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 9.0])
    parser.add_argument("--colour", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--settle", type=float, nargs="+", default=[1.5, 2.0, 2.5, 3.0],
                        help="tune: the settle times tried with the chosen setting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1, as captioner video uses)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    captioner = Captioner.load()
    (tune if args.task == "tune" else report)(args, captioner)


if __name__ == "__main__":
    main()
