"""Caption metrics the COCO caption toolkit's way, and how varied a model's captions are.

Scores come from pycocoevalcap: its PTB tokenizer, then BLEU-1..4, METEOR,
ROUGE-L and CIDEr-D, quoted as percentages the way papers print them. SPICE is
left out because it downloads a parser at run time. The tokenizer and METEOR
are Java programs, so Java must be installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as toolkit_meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer as ptb

from ..data.text import clean
from ..errors import CaptionerError

NO_JAVA = ("METEOR and the PTB tokenizer need Java: install a Java runtime "
           "(e.g. `apt-get install default-jre-headless`) and run again.")
METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

_TOKENIZE_TIMEOUT = 600.0   # seconds; the whole COCO test set takes a few


def score_captions(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of one caption per photo, as percentages.

    Keys of both dicts are photo ids and must match. The result also holds
    "photos", the number of photos scored. CIDEr-D weighs n-grams by how rare
    they are among these references, so it is only comparable between runs
    on the same photos. Starting METEOR costs a few seconds; to score many
    sets in a row, keep one `CaptionScorer` open instead.
    """
    with CaptionScorer() as scorer:
        return scorer.score(predictions, references)


class CaptionScorer:
    """Scores caption sets with one METEOR Java process kept open between sets.

    Use it as a context manager (or call `close()`): the Java process is ended
    on exit, not left to the garbage collector.
    """

    def __init__(self) -> None:
        self._meteor: _Meteor | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> "CaptionScorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Ends the METEOR Java process, if one is running."""
        if self._meteor is not None:
            self._meteor.close()
            self._meteor = None

    def __del__(self) -> None:
        self.close()

    def score(self, predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
        """Like `score_captions`, reusing this scorer's METEOR process."""
        ids = _check(predictions, references)
        if shutil.which("java") is None:
            raise CaptionerError(NO_JAVA)
        with self._lock:
            if self._meteor is None:
                # Loading METEOR's paraphrase tables takes seconds: let it start
                # while the tokenizer and the Python metrics run.
                try:
                    self._meteor = _Meteor()
                except OSError as error:
                    raise CaptionerError(f"Java could not be started for METEOR ({error.strerror or error}): "
                                         "check that `java -version` works and run again.") from None
            gts, res = _tokenize(ids, predictions, references)
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            rouge, _ = Rouge().compute_score(gts, res)
            cider, _ = Cider().compute_score(gts, res)
            try:
                meteor = self._meteor.score(gts, res)
            except CaptionerError:
                self.close()
                raise
        values = [*bleu, meteor, rouge, cider]
        scores: dict[str, Any] = {name: 100.0 * float(v) for name, v in zip(METRICS, values)}
        scores["photos"] = len(ids)
        return scores


def photo_cider(predictions: list[str], references: list[list[str]]) -> np.ndarray:
    """Each photo's CIDEr-D (toolkit scale: 1.0 is the 100 papers print) of already-cleaned text, no Java needed.

    Document frequencies come from these references, as in the toolkit.
    """
    gts = {i: refs for i, refs in enumerate(references)}
    res = {i: [p] for i, p in enumerate(predictions)}
    return np.asarray(Cider().compute_score(gts, res)[1], dtype=np.float32)


def dev_cider(predictions: list[str], references: list[list[str]]) -> float:
    """CIDEr-D x 100 of already-cleaned text: for choosing models and settings on dev sets."""
    return 100 * float(photo_cider(predictions, references).mean())


def diversity(predictions: dict[str, str]) -> dict[str, float]:
    """How varied the captions are: a model that says the same thing for every photo scores low.

    - "distinct_captions": distinct captions / photos (1.0 = every caption differs),
    - "vocabulary": the number of distinct words used,
    - "mean_length": mean caption length in words,
    - "repeated_word": share of captions with a word repeated back-to-back ("a dog dog"),
    - "photos": the number of captions measured.

    Words are compared lower-cased, punctuation dropped (`text.clean`).
    """
    if not predictions:
        raise CaptionerError("There are no captions to measure: pass at least one photo's caption.")
    tokens = [tuple(clean(c)) for c in predictions.values()]
    n = len(tokens)
    return {
        "distinct_captions": len(set(tokens)) / n,
        "vocabulary": len({w for t in tokens for w in t}),
        "mean_length": sum(map(len, tokens)) / n,
        "repeated_word": sum(any(a == b for a, b in zip(t, t[1:])) for t in tokens) / n,
        "photos": n,
    }


def _check(predictions: Mapping[str, str], references: Mapping[str, list[str]]) -> list[str]:
    """The photo ids to score, once both sides are known to describe the same photos."""
    if not predictions or not references:
        raise CaptionerError("There are no captions to score: pass the predictions and references "
                             "of at least one photo.")
    only_pred = [k for k in predictions if k not in references]
    only_ref = [k for k in references if k not in predictions]
    if only_pred or only_ref:
        parts = []
        if only_pred:
            parts.append(f"{len(only_pred)} only in the predictions (e.g. {only_pred[0]!r})")
        if only_ref:
            parts.append(f"{len(only_ref)} only in the references (e.g. {only_ref[0]!r})")
        raise CaptionerError(f"Predictions and references cover different photos ({'; '.join(parts)}): "
                             "score the same photo ids on both sides.")
    for k, caption in predictions.items():
        if not isinstance(caption, str):
            raise CaptionerError(f"The prediction for photo {k!r} is a {type(caption).__name__}, "
                                 "not a caption: pass one string per photo.")
    for k, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise CaptionerError(f"The references for photo {k!r} are not a list of captions: "
                                 "pass a non-empty list of strings per photo.")
    return list(predictions)


def _tokenize(ids: list[str], predictions: Mapping[str, str],
              references: Mapping[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """PTB-tokenized references and predictions, in the form the toolkit's scorers take."""
    lines = [c for k in ids for c in references[k]] + [predictions[k] for k in ids]
    tokens = _ptb_tokenize(lines)
    gts, at = {}, 0
    for k in ids:
        gts[k] = tokens[at:at + len(references[k])]
        at += len(references[k])
    res = {k: [t] for k, t in zip(ids, tokens[at:])}
    return gts, res


def _ptb_tokenize(lines: list[str]) -> list[str]:
    """The toolkit's PTB tokenization (same jar, flags and punctuation list), one line per caption.

    Run here rather than through `PTBTokenizer.tokenize`, which writes its
    input into the installed package folder (fails where that is read-only),
    lets Java's progress line through to stderr, and silently pairs captions
    with the wrong photos when one holds a line break other than "\\n" (\\r,
    U+2028). Collapsing all whitespace first gives exactly one line per caption,
    which is checked.
    """
    jar = Path(ptb.__file__).parent / ptb.STANFORD_CORENLP_3_4_1_JAR
    cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    text = "".join(" ".join(line.split()) + "\n" for line in lines)
    try:
        done = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=_TOKENIZE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise CaptionerError(f"The PTB tokenizer (Java) did not finish in {_TOKENIZE_TIMEOUT:.0f} s: "
                             "check that `java -version` answers promptly and run again.") from None
    except OSError as error:
        raise CaptionerError(f"Java could not be started for the PTB tokenizer ({error.strerror or error}): "
                             "check that `java -version` works and run again.") from None
    if done.returncode != 0:
        raise CaptionerError(f"The PTB tokenizer (Java) failed ({_last_line(done.stderr)}): "
                             "check that `java -version` works and run again.")
    out = done.stdout.decode("utf-8", errors="replace").split("\n")[:-1]
    if len(out) != len(lines):  # never seen once whitespace is collapsed; scores would go to the wrong photos
        raise CaptionerError(f"The PTB tokenizer (Java) returned {len(out)} lines for {len(lines)} captions: "
                             "report this as a captioner bug with the captions that caused it.")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS) for line in out]


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", errors="replace").strip().splitlines()
    return lines[-1].strip() if lines else "no message"


class _Meteor(toolkit_meteor.Meteor):
    """The toolkit's METEOR wrapper, made safe to run and to close.

    The toolkit's version pipes Java's stderr without ever reading it (Java
    blocks once that pipe fills) and is closed only by `__del__`, which waits
    for a lock that an exception mid-score leaves held: the interpreter then
    hangs at exit. Here stderr goes to a file, a watchdog ends a Java process
    that stops answering, and `close()` ends the process for sure.
    """

    timeout = 120.0  # seconds without an answer before Java is presumed stuck, plus 0.1 s a photo

    def __init__(self) -> None:  # replaces the toolkit's, same command
        self.meteor_cmd = ["java", "-jar", "-Xmx2G", toolkit_meteor.METEOR_JAR,
                           "-", "-", "-stdio", "-l", "en", "-norm"]
        self.lock = threading.Lock()
        self._stderr = tempfile.TemporaryFile()
        self.meteor_p = subprocess.Popen(
            self.meteor_cmd, cwd=os.path.dirname(os.path.abspath(toolkit_meteor.__file__)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)

    def score(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
        """Corpus METEOR, or a CaptionerError if Java fails or stops answering."""
        timeout = self.timeout + 0.1 * len(res)
        timed_out = threading.Event()
        process = self.meteor_p

        def stop() -> None:
            timed_out.set()
            process.kill()

        watchdog = threading.Timer(timeout, stop)
        watchdog.daemon = True
        watchdog.start()
        try:
            value, _ = self.compute_score(gts, res)
            return float(value)
        except (ValueError, OSError) as error:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                if not timed_out.is_set():
                    raise CaptionerError(f"METEOR (Java) gave an answer that is not a score ({error}): "
                                         "check that pycocoevalcap==1.2 is installed and run again.") from None
            if timed_out.is_set():
                why = f"it gave no answer in {timeout:.0f} s"
            else:
                self._stderr.seek(0)
                why = _last_line(self._stderr.read()[-4000:])
            raise CaptionerError(f"METEOR (Java) stopped ({why}): check that `java -version` works and "
                                 "that 2 GB of memory are free, then run again.") from None
        finally:
            watchdog.cancel()

    def close(self) -> None:
        """Ends the Java process and releases its pipes; safe to call twice."""
        process = getattr(self, "meteor_p", None)
        if process is None:
            return
        self.meteor_p = None
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if process.poll() is None:
            process.kill()
        process.wait()
        self._stderr.close()

    def __del__(self) -> None:
        self.close()
