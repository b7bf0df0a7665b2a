"""`captioner video` and `captioner.video.scenes` on small real H.264 videos made here with PyAV from the example
photos and from generated pictures: scenes at cuts and dissolves, the output formats, broken and missing
sources, a live stream served over HTTP from 127.0.0.1 that drops once, and the same pictures in every container
and codec the README promises (mp4, mkv, webm, mov, avi; H.264, HEVC, VP9, AV1, MPEG-4) and as HLS over HTTP.

The shipped model captions (its encoder's vectors are what the scene thresholds were chosen on), so captions
here are real sentences: a few tests check that a scene of the cat says "cat".
"""
from __future__ import annotations

import functools
import gc
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import captioner.video.scenes as scene_module
from captioner.captioning import Captioner
from captioner.cli import main
from captioner.video.scenes import SceneConfig, scenes
from captioner.video.sources import VideoError, parse_source, samples

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from make_videos import Change, Shot, make_video  # noqa: E402

EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))
SRC = ROOT / "src"
LINE = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d) -> (\d\d):(\d\d):(\d\d\.\d)  (\S.*)$")
SIZE, FPS = (160, 96), 10  # small: the encoder squashes every frame to 224 x 224 anyway


def seconds(h: str, m: str, s: str) -> float:
    return int(h) * 3600 + int(m) * 60 + float(s)


def shots_of(names: list[str], lengths: list[float], kinds: list[str]) -> tuple[list[Shot], list[Change]]:
    """Shots of the given lengths, joined by the given kinds of change (dissolves 1 s long)."""
    shots, changes, t = [], [], 0.0
    for i, (name, length) in enumerate(zip(names, lengths)):
        shots.append(Shot(name, t, t + length, ["zoom in", "pan left", "zoom out", "pan right"][i % 4]))
        t += length
        if i < len(kinds):
            changes.append(Change(t, kinds[i], 1.0 if kinds[i] == "dissolve" else 0.0))
    return shots, changes


def generated(seed: int) -> Image.Image:
    """A made-up picture: a colour gradient with a few rectangles."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:160]
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = (a * (x[..., None] / 160) + b * (y[..., None] / 96)).clip(0, 255)
    for _ in range(4):
        x0, y0 = rng.integers(0, 120), rng.integers(0, 70)
        pixels[y0:y0 + 25, x0:x0 + 40] = rng.uniform(0, 255, 3)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    photos = [Image.open(p) for p in EXAMPLES]
    names = [p.stem for p in EXAMPLES]
    made = {}
    # The six examples, 3-3.5 s each, joined by cuts and dissolves.
    shots, changes = shots_of(names, [3.4, 3.1, 3.3, 3.5, 3.2, 3.0], ["cut", "dissolve", "dissolve", "cut", "dissolve"])
    made["film"] = folder / "film.mkv"
    make_video(photos, made["film"], shots, changes, SIZE, FPS, gop=FPS)
    # A video that is cut short: the first 60% of its bytes.
    whole = made["film"].read_bytes()
    made["truncated"] = folder / "truncated.mkv"
    made["truncated"].write_bytes(whole[:int(0.6 * len(whole))])
    # A video with 8% of its bytes, from 45% on, overwritten by noise.
    damaged = bytearray(whole)
    start, length = int(0.45 * len(whole)), int(0.08 * len(whole))
    damaged[start:start + length] = np.random.default_rng(5).integers(0, 256, length, dtype=np.uint8).tobytes()
    made["damaged"] = folder / "damaged.mkv"
    made["damaged"].write_bytes(bytes(damaged))
    # One still picture for 12 s: one long scene.
    shots, changes = shots_of(["still"], [12.0], [])
    made["still"] = folder / "still.mp4"
    make_video([generated(0)], made["still"], shots, changes, SIZE, FPS, motion=0.0, gop=FPS)
    # The live stream: three examples and two generated pictures, 3 s each, as MPEG-TS with a keyframe a second.
    live_pictures = [photos[5], generated(1), photos[1], generated(2), photos[3]]
    shots, changes = shots_of(["cat", "gen1", "coffee", "gen2", "rock"], [3.0] * 5, ["cut", "dissolve", "cut", "cut"])
    made["live"] = folder / "live.ts"
    make_video(live_pictures, made["live"], shots, changes, SIZE, FPS, gop=FPS)
    # Audio only: a WAV file.
    made["audio"] = folder / "tone.wav"
    with wave.open(str(made["audio"]), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((np.sin(np.arange(8000) / 10) * 8000).astype(np.int16).tobytes())
    # Not a video at all, and a video in a codec FFmpeg does not know (its Matroska codec id rewritten).
    made["text"] = folder / "notes.mp4"
    made["text"].write_text("this is not a video\n")
    made["unknown codec"] = folder / "unknown.mkv"
    made["unknown codec"].write_bytes(whole.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/AVC", 1))
    return made


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    return Captioner.load()


@pytest.fixture
def run(captioner, monkeypatch, capsys):
    """`captioner video ARGS...` in-process with the shipped model loaded once: (exit status, stdout lines, stderr)."""
    monkeypatch.setattr(Captioner, "load", classmethod(lambda cls, *a, **k: captioner))

    def go(*args) -> tuple[int, list[str], str]:
        code = main(["video", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out.splitlines(), err
    return go


def truth(video: Path) -> dict:
    return json.loads(video.with_suffix(".json").read_text())


def test_scenes_are_found_at_cuts_and_dissolves_and_captioned_from_their_photo(captioner, videos):
    found = list(scenes(captioner, videos["film"]))
    changes = [c["time"] for c in truth(videos["film"])["changes"]]
    assert len(found) == len(changes) + 1
    assert [s.number for s in found] == list(range(1, len(found) + 1))
    for before, after, change in zip(found, found[1:], changes):
        assert before.end == after.start and abs(after.start - change) <= 1.0, (after.start, change)
    assert found[0].start == 0.0 and abs(found[-1].end - truth(videos["film"])["duration"]) <= 0.5
    assert len({s.caption.text for s in found}) == len(found)  # six photos, six different captions
    said = dict(zip([p.stem for p in EXAMPLES], [s.caption.text for s in found]))
    assert "cat" in said["tabby_cat"] and re.search(r"\b(cup|coffee)\b", said["cup_of_coffee"])
    assert "tripod" in said["man_with_camera_on_tripod"]
    for s in found:
        assert s.start <= s.keytime <= s.end and s.caption.confidence is not None and s.caption.tags


def test_a_scene_keeps_a_bounded_number_of_frames_however_long_it_is(captioner, videos, monkeypatch):
    """One 12 s scene sampled 48 times, keeping its frames: the candidates are thinned as it grows."""
    def live_frames() -> int:
        gc.collect()
        return sum(type(o) is av.VideoFrame for o in gc.get_objects())

    before = live_frames()
    config = SceneConfig(keep=3)
    it = scenes(captioner, videos["still"], every=0.25, keyframes=True, config=config)
    (scene,) = list(it)
    assert scene.start == 0.0 and scene.end >= 11.5 and scene.keyframe().size == SIZE
    del it
    held = live_frames() - before
    assert 1 <= held <= 2  # the scene's keyframe (and the one PyAV may cache); never the 48 samples
    seen = []
    original = scene_module.OpenScene.add

    def add(self, look, keep):
        original(self, look, keep)
        seen.append(len(self.candidates))

    monkeypatch.setattr(scene_module.OpenScene, "add", add)
    list(scenes(captioner, videos["still"], every=0.25, config=config))
    assert len(seen) >= 45 and max(seen) < 2 * config.keep


def test_plain_output_is_a_line_per_scene(run, videos):
    code, lines, err = run(videos["film"])
    assert code == 0 and not err.strip(), err
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    spans = [(seconds(*m.groups()[:3]), seconds(*m.groups()[3:6])) for m in parsed]
    assert len(spans) == 6 and spans[0][0] == 0.0
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:]))
    code, tagged, _ = run(videos["film"], "--tags")  # each scene's line, then what the classifier recognised
    assert code == 0 and tagged[::2] == lines and all(line.startswith("  tags: ") for line in tagged[1::2])


def parse_vtt(text: str) -> list[tuple[str, str, str]]:
    blocks = text.split("\n\n")
    assert blocks[0] == "WEBVTT" and text.endswith("\n\n")
    cues = []
    for block in blocks[1:-1]:
        timing, caption = block.split("\n")
        m = re.fullmatch(r"(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)", timing)
        assert m and caption.strip(), block
        cues.append((m[1], m[2], caption))
    return cues


def parse_srt(text: str) -> list[tuple[str, str, str]]:
    assert text.endswith("\n\n")
    cues = []
    for n, block in enumerate(text.split("\n\n")[:-1], 1):
        number, timing, caption = block.split("\n")
        m = re.fullmatch(r"(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)", timing)
        assert number == str(n) and m and caption.strip(), block
        cues.append((m[1].replace(",", "."), m[2].replace(",", "."), caption))
    return cues


def stamp(text: str) -> float:
    h, m, s = text.split(":")
    return seconds(h, m, s)


def test_json_subtitles_and_frames_describe_the_same_scenes(run, videos, tmp_path):
    vtt, srt, frames = tmp_path / "film.vtt", tmp_path / "film.srt", tmp_path / "frames"
    code, lines, err = run(videos["film"], "--json", "--vtt", vtt, "--srt", srt, "--frames", frames)
    assert code == 0, err
    records = [json.loads(line) for line in lines]
    assert len(records) == 6
    for r in records:
        assert list(r)[:6] == ["source", "start", "end", "caption", "confidence", "tags"]
        assert r["source"] == str(videos["film"]) and r["caption"] and 0 <= r["confidence"] <= 1
        assert all(set(t) == {"label", "p", "word"} for t in r["tags"])
    assert [r["start"] for r in records] == sorted(r["start"] for r in records)
    for cues in (parse_vtt(vtt.read_text()), parse_srt(srt.read_text())):
        assert len(cues) == len(records)
        for (start, end, caption), r in zip(cues, records):
            assert abs(stamp(start) - r["start"]) < 0.001 and abs(stamp(end) - r["end"]) < 0.001
            assert caption.endswith(r["caption"])  # the said caption: doubt in words when unsure
    saved = sorted(frames.iterdir())
    assert [Path(r["frame"]) for r in records] == saved and len(saved) == 6
    for path in saved:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == SIZE


def one_sentence(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_truncated_file_gives_the_scenes_before_and_says_where_it_stopped(run, videos):
    code, lines, err = run(videos["truncated"])
    assert code == 1
    message = one_sentence(err)
    stopped = re.search(r"ends early, at (\d\d):(\d\d):(\d\d\.\d) of the", message)
    assert stopped and str(videos["truncated"]) in message, message
    spans = [LINE.match(line) for line in lines]
    assert len(spans) >= 2 and all(spans), lines
    assert abs(seconds(*spans[-1].groups()[3:6]) - seconds(*stopped.groups())) <= 1.0


def test_a_damaged_file_gives_its_scenes_and_one_sentence_saying_where(run, videos):
    """Noise in the middle of a file: the demuxer finds its feet after it and the decoder patches what it can;
    the scenes all come, with one sentence saying where the video is damaged (or, had the demuxer given up,
    the scenes before and where it stopped)."""
    code, lines, err = run(videos["damaged"])
    message = one_sentence(err)
    where = re.search(r"is damaged (?:at|and could not be read after) (\d\d):(\d\d):(\d\d\.\d)", message)
    assert where and str(videos["damaged"]) in message, message
    spans = [LINE.match(line) for line in lines]
    assert all(spans) and seconds(*spans[0].groups()[:3]) == 0.0
    damaged_at = seconds(*where.groups())
    assert 0.3 * 19.5 < damaged_at < 0.7 * 19.5  # the noise is 45-53% of the way through the file
    if code == 0:
        assert abs(seconds(*spans[-1].groups()[3:6]) - truth(videos["film"])["duration"]) <= 0.5
    else:
        assert code == 1 and seconds(*spans[-1].groups()[3:6]) >= damaged_at - 1.0


@pytest.mark.parametrize("which, expected", [
    ("audio", r"has no video stream \(it holds audio\)"),
    ("text", r"is not a video FFmpeg can read"),
    ("unknown codec", r"in a codec that captioner's FFmpeg cannot decode"),
    ("missing", r"does not exist"),
    ("scheme", r"does not read ftp:// sources"),
    ("camera", r"there is no camera at /dev/video98"),
])
def test_a_source_that_cannot_be_read_is_one_sentence(run, videos, tmp_path, which, expected):
    source = {"missing": tmp_path / "gone.mp4", "scheme": "ftp://127.0.0.1/film.mp4",
              "camera": "/dev/video98"}.get(which) or videos[which]
    code, lines, err = run(source)
    assert code == 1 and not lines
    assert re.search(expected, one_sentence(err)), err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_stream_is_one_sentence_and_the_other_sources_go_on(run, videos):
    port = closed_port()
    started = time.monotonic()
    code, lines, err = run(f"http://127.0.0.1:{port}/live.ts", videos["film"])
    assert code == 1 and time.monotonic() - started < 30
    assert re.search(rf"cannot open the stream http://127.0.0.1:{port}/live.ts \(connection refused\)",
                     one_sentence(err), re.IGNORECASE), err
    assert len(lines) == 6 and all(line.startswith(f"{videos['film']}: ") for line in lines)


class Broadcast(http.server.ThreadingHTTPServer):
    """An MPEG-TS file served from 127.0.0.1 at real-time pace, as a camera's live stream: the clock starts at
    the first request, each request gets the stream from the last keyframe before the present, and the first
    one is dropped once, at `drop_at` seconds."""

    def __init__(self, path: Path, drop_at: float):
        self.data, self.drop_at = path.read_bytes(), drop_at
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            packets = [(float(p.dts * stream.time_base), p.pos, p.is_keyframe)
                       for p in container.demux(stream) if p.dts is not None and p.pos is not None and p.pos >= 0]
        self.times = [t - packets[0][0] for t, _, _ in packets]
        self.positions = [pos for _, pos, _ in packets]
        self.keyframes = [(t - packets[0][0], pos) for t, pos, key in packets if key]
        self.started: float | None = None
        self.dropped = False
        super().__init__(("127.0.0.1", 0), _Handler)

    def clock(self) -> float:
        return time.monotonic() - self.started

    def sendable(self, now: float) -> int:
        """Bytes of the file due by `now`: up to the first packet not yet due."""
        later = [pos for t, pos in zip(self.times, self.positions) if t > now + 0.1]
        return min(later) // 188 * 188 if later else len(self.data)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Broadcast

    def do_GET(self) -> None:
        b = self.server
        if b.started is None:
            b.started = time.monotonic()
        now = b.clock()
        position = max(pos for t, pos in b.keyframes if t <= max(now, 0.0)) // 188 * 188
        if position >= len(b.data) or now > b.times[-1] + 1:
            self.send_error(404, "the broadcast is over")
            return
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        first = not b.dropped
        try:
            while position < len(b.data):
                if first and b.clock() >= b.drop_at:
                    b.dropped = True
                    return  # the connection drops
                end = b.sendable(b.clock())
                if end > position:
                    self.wfile.write(b.data[position:end])
                    self.wfile.flush()
                    position = end
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:
        pass


def test_a_live_stream_prints_each_scene_as_it_ends_reconnects_once_and_stops_cleanly(videos, tmp_path):
    broadcast = Broadcast(videos["live"], drop_at=7.0)
    threading.Thread(target=broadcast.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{broadcast.server_address[1]}/live.ts"
    vtt, srt = tmp_path / "live.vtt", tmp_path / "live.srt"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "captioner", "video", url, "--vtt", vtt, "--srt", srt],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    printed: list[tuple[float, str]] = []  # (the broadcast's clock, line)

    def read() -> None:
        for line in proc.stdout:
            printed.append((broadcast.clock(), line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while (broadcast.started is None or broadcast.clock() < 13.5) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broadcast.started is not None, "the command never opened the stream"
        interrupted = broadcast.clock()
        proc.send_signal(signal.SIGINT)  # Ctrl+C, in the middle of the last scene (12-15 s)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=5)
        broadcast.shutdown()
    err = proc.stderr.read()
    assert code == 130 and "Traceback" not in err, err
    spans = [(t, LINE.match(line)) for t, line in printed]
    assert all(m for _, m in spans), printed
    ends = [(t, seconds(*m.groups()[:3]), seconds(*m.groups()[3:6])) for t, m in spans]
    for t, start, end in ends[:-1]:
        assert t <= end + 2.0, f"the scene ending at {end} s was printed at {t:.1f} s"
    assert err.count("dropped") == 1 and err.count("reopened") == 1, err  # said once
    assert 4 <= len(ends) <= 7, printed  # five pictures, one of them broken in two by the drop
    last_start, last_end = ends[-1][1], ends[-1][2]
    assert abs(last_start - 12.0) <= 1.0 and abs(last_end - interrupted) <= 1.5, (ends, interrupted)
    assert ends[-1][0] <= interrupted + 3.0  # printed on Ctrl+C, at once
    for cues in (parse_vtt(vtt.read_text()), parse_srt(srt.read_text())):
        assert [(round(stamp(a), 1), round(stamp(b), 1)) for a, b, _ in cues] == [(s, e) for _, s, e in ends]


def test_samples_are_every_so_many_seconds_of_the_video(videos):
    times = [s.time for s in samples(parse_source(str(videos["film"])), 0.5, 32) if hasattr(s, "pixels")]
    assert times[0] == 0.0 and len(times) == pytest.approx(truth(videos["film"])["duration"] / 0.5, abs=1)
    gaps = np.diff(times)
    assert gaps.min() >= 0.4 - 1e-6 and gaps.max() <= 0.6 + 1e-6  # a frame or so late at most (1 frame = 0.1 s)


def test_a_video_error_is_a_captioner_error_naming_the_source(captioner, videos):
    with pytest.raises(VideoError, match="ends early") as caught:
        for _ in scenes(captioner, videos["truncated"]):
            pass
    assert str(videos["truncated"]) in str(caught.value) and "\n" not in str(caught.value)


def test_a_video_recorded_sideways_is_seen_upright(captioner, tmp_path):
    """A phone held upright records sideways frames and a display rotation: frames are turned as players turn
    them (FFmpeg's rotation is counterclockwise), before the encoder sees them and in the saved keyframe."""
    path = tmp_path / "upright.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 96, 48, "yuv420p"
        stream.set_display_rotation(90)
        for i in range(2 * FPS):
            pixels = np.zeros((48, 96, 3), np.uint8)
            pixels[:, :48] = 255  # the stored frame's left half is white: shown upright, its bottom half
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    sample = next(samples(parse_source(path), 1.0, 32))
    rows = sample.pixels.mean(axis=(1, 2))
    assert rows[:12].mean() < 40 and rows[-12:].mean() > 215
    (scene,) = scenes(captioner, path, keyframes=True)
    keyframe = np.asarray(scene.keyframe())
    assert keyframe.shape[:2] == (96, 48) and keyframe[:40].mean() < 40 and keyframe[-40:].mean() > 215


def test_a_live_stream_that_comes_back_empty_is_tried_again_with_longer_waits_and_said_once(videos):
    """After a drop, openings that give no picture are more tries, each waiting longer, with no new message."""
    import logging

    data = videos["live"].read_bytes()[:60_000]  # about 1 s of the stream
    requests: list[float] = []

    class Once(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(time.monotonic())
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            if len(requests) == 1:
                self.wfile.write(data)  # then the connection closes: a drop; later ones bring nothing

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Once)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("captioner.video.sources")
    logger.addHandler(handler)
    stop = threading.Event()
    got: list = []
    source = parse_source(f"http://127.0.0.1:{server.server_address[1]}/live.ts")
    reader = threading.Thread(target=lambda: got.extend(samples(source, 1.0, 32, live=True, stop=stop)))
    try:
        reader.start()
        time.sleep(6.5)
        stop.set()
        reader.join(timeout=10)
    finally:
        logger.removeHandler(handler)
        server.shutdown()
    assert not reader.is_alive() and any(hasattr(s, "pixels") for s in got)
    assert sum("dropped" in m for m in said) == 1 and not any("reopened" in m for m in said), said
    gaps = np.diff(requests)
    assert 3 <= len(requests) <= 4 and all(b > a for a, b in zip(gaps, gaps[1:])), gaps  # waits 1 s, 2 s, 4 s


# Three examples shown 2.5, 2 and 2.5 s (cuts at 2.5 and 4.5 s, halfway between two samples a second apart), in
# each container and codec promised. PyAV's wheels (av==18.1.0, constraints.txt) bring these encoders, so a
# missing one is an error here, not a skip. MPEG-4 Part 2 at FFmpeg's default rate is far blurrier than the others
# (about 25 kbit/s here); quantizers up to 5 are what such files (Xvid, DivX) were made with.
CODECS = {  # file: (encoder, the decoder FFmpeg reads it with, the encoder's options)
    "mp4-h264.mp4": ("libx264", "h264", {}),
    "mkv-hevc.mkv": ("libx265", "hevc", {}),
    "webm-vp9.webm": ("libvpx-vp9", "vp9", {}),
    "mkv-av1.mkv": ("libsvtav1", "libdav1d", {}),
    "webm-av1.webm": ("libsvtav1", "libdav1d", {}),
    "mov-h264.mov": ("libx264", "h264", {}),
    "avi-mpeg4.avi": ("mpeg4", "mpeg4", {"qmax": "5"}),
}
SHOWN = {"tabby_cat": r"\bcat\b", "cup_of_coffee": r"\b(cup|coffee)\b", "man_with_camera_on_tripod": r"\btripod\b"}
CUTS, LENGTH = [0.0, 2.5, 4.5], 7.0


def three_shots(path: Path, codec: str, options: dict[str, str]) -> None:
    pictures = [Image.open(ROOT / "examples" / f"{name}.jpg") for name in SHOWN]
    shots = [Shot(name, start, end, "zoom in") for name, start, end in zip(SHOWN, CUTS, CUTS[1:] + [LENGTH])]
    make_video(pictures, path, shots, [Change(t, "cut", 0.0) for t in CUTS[1:]], SIZE, FPS, gop=FPS, codec=codec,
               options=options)


@pytest.fixture(scope="module")
def codec_videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("codecs")
    for name, (encoder, _, options) in CODECS.items():
        three_shots(folder / name, encoder, options)
    return {name: folder / name for name in CODECS}


@pytest.fixture(scope="module")
def hls(tmp_path_factory) -> Path:
    """The three shots as H.264 in MPEG-TS, cut by FFmpeg's HLS muxer into segments of about 1 s and a VOD
    playlist, clip.m3u8."""
    folder = tmp_path_factory.mktemp("hls")
    three_shots(folder / "whole.ts", "libx264", {})
    with av.open(str(folder / "whole.ts")) as whole, av.open(str(folder / "clip.m3u8"), "w", format="hls", options={
            "hls_time": "1", "hls_list_size": "0", "hls_playlist_type": "vod"}) as out:
        stream = out.add_stream_from_template(whole.streams.video[0])
        for packet in whole.demux(whole.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    (folder / "whole.ts").unlink()
    return folder


def scene_records(run, source) -> list[dict]:
    code, lines, err = run(source, "--json")
    assert code == 0 and "Traceback" not in err, err
    return [json.loads(line) for line in lines]


def assert_three_shots(records: list[dict], reference: list[dict]) -> None:
    """The three shots' scenes: starting within half a sample step of the cuts and within a step of the
    reference's, the last ending with the video, each captioned as its photo."""
    assert [r["start"] for r in records] == pytest.approx(CUTS, abs=0.5)
    assert [r["start"] for r in records] == pytest.approx([r["start"] for r in reference], abs=1.0)
    assert abs(records[-1]["end"] - LENGTH) <= 0.15  # a frame and a half: B-frames' later showing counted
    for r, said in zip(records, SHOWN.values()):
        assert re.search(said, r["caption"]), (said, r["caption"])


@pytest.mark.parametrize("name", list(CODECS))
def test_every_container_and_codec_promised_gives_the_scenes_of_the_h264_mp4(run, codec_videos, name):
    with av.open(str(codec_videos[name])) as container:
        assert container.streams.video[0].codec_context.name == CODECS[name][1]
    records = scene_records(run, codec_videos[name])
    assert all(r["source"] == str(codec_videos[name]) for r in records)
    assert_three_shots(records, scene_records(run, codec_videos["mp4-h264.mp4"]))


class Playlists(http.server.ThreadingHTTPServer):
    """A folder served from 127.0.0.1, and /live.m3u8: its clip.m3u8 as a live HLS playlist that grows, each
    segment published once it has been recorded (the recording began a segment before the first request, so
    the first is there at once), with its end (#EXT-X-ENDLIST) once all are."""

    def __init__(self, folder: Path):
        self.segments = [(float(length), name) for length, name in
                         re.findall(r"#EXTINF:([\d.]+),\n(\S+)", (folder / "clip.m3u8").read_text())]
        self.started: float | None = None
        super().__init__(("127.0.0.1", 0), functools.partial(_Files, directory=str(folder)))

    def recorded(self) -> float:
        """Seconds of the video recorded by now."""
        return time.monotonic() - self.started + self.segments[0][0]

    def live(self) -> str:
        self.started = self.started or time.monotonic()
        lines, end = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0"], 0.0
        for length, name in self.segments:
            if end + length > self.recorded():
                break
            lines += [f"#EXTINF:{length:.6f},", name]
            end += length
        else:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"


class _Files(http.server.SimpleHTTPRequestHandler):
    server: Playlists

    def do_GET(self) -> None:
        if self.path != "/live.m3u8":
            return super().do_GET()
        body = self.server.live().encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.apple.mpegurl")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def playlists(hls):
    server = Playlists(hls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_an_hls_playlist_over_http_is_read_to_its_end_with_the_scenes_of_the_file(run, codec_videos, playlists):
    url = f"http://127.0.0.1:{playlists.server_address[1]}/clip.m3u8"
    records = scene_records(run, url)
    assert all(r["source"] == url for r in records)
    assert_three_shots(records, scene_records(run, codec_videos["mp4-h264.mp4"]))


def test_a_live_hls_playlist_prints_each_scene_soon_after_it_is_recorded_and_ends_with_the_playlist(playlists):
    """A scene prints within the 2 s of the MPEG-TS live test after its end, plus HLS's own delay: the segment
    holding the picture that shows the scene has ended is published once it is recorded, and a player looks for
    new segments about once a segment. When the playlist gets its end, the stream is over (exit status 0), not
    read again from its start."""
    url = f"http://127.0.0.1:{playlists.server_address[1]}/live.m3u8"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "captioner", "video", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    printed: list[tuple[float, str]] = []  # (seconds of the video recorded, line)
    deadline = threading.Timer(60, proc.kill)  # one that never ends is killed, and fails below
    deadline.start()
    try:
        for line in proc.stdout:
            printed.append((playlists.recorded(), line.rstrip("\n")))
        code = proc.wait()
    finally:
        deadline.cancel()
    err = proc.stderr.read()
    assert code == 0 and "Traceback" not in err and "the stream is over" in err, err
    spans = [(t, LINE.match(line)) for t, line in printed]
    assert len(spans) == 3 and all(m for _, m in spans), printed
    delay = 2 * max(length for length, _ in playlists.segments)
    for (t, m), said in zip(spans, SHOWN.values()):
        end = seconds(*m.groups()[3:6])
        assert t <= end + 2.0 + delay, f"the scene ending at {end} s was printed with {t:.1f} s recorded"
        assert re.search(said, m[7]), m[7]
    starts = [seconds(*m.groups()[:3]) for _, m in spans]
    assert starts == pytest.approx(CUTS, abs=0.5) and abs(seconds(*spans[-1][1].groups()[3:6]) - LENGTH) <= 0.15
