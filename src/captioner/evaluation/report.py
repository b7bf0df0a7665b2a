"""The evaluation report: `report.json` for programs and a self-contained `report.html` for people."""
from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import CaptionerError
from ..files import write_atomic

THUMBNAIL_PX = 160

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;background:#fafafa}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.3em .8em;text-align:left}
th{background:#f0f0f0;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.tables{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em;font-size:.9em}
.card img,.card .nophoto{display:block;width:160px;height:160px;object-fit:contain;margin:0 auto .5em;
background:#eee}
.card .nophoto{display:flex;align-items:center;justify-content:center;color:#777;text-align:center}
.caption{font-weight:600;margin:.2em 0}.logp{color:#666;font-size:.85em}
.card ul{margin:.3em 0 0;padding-left:1.2em;color:#555}.file{color:#888;font-size:.8em;word-break:break-all}
.note{color:#666}
"""


def write_report(out_dir: str | Path, *, scores: dict, diversity: dict, samples: list[dict], meta: dict,
                 max_samples: int = 48) -> tuple[Path, Path]:
    """Writes `report.json` (everything, all samples) and `report.html` (readable, at most `max_samples` cards).

    Each sample has "path" (the photo), "caption" (generated), "references"
    (list of str) and optionally "score" (the caption's log-probability). The
    HTML page needs no network and no JavaScript: photos are embedded as small
    JPEG thumbnails, so the file can be mailed or archived alone. A photo that
    cannot be read gets a placeholder rather than stopping the report. Both
    files are replaced atomically, so a crash never leaves half a report.
    Returns the paths (json, html).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CaptionerError(f"Cannot create the report folder {out} ({error.strerror or error}): "
                             "choose a folder you can write to.") from None
    meta = dict(meta)
    meta.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if "photos" not in meta and "photos" in scores:
        meta["photos"] = scores["photos"]
    samples = [_plain_sample(s) for s in samples]

    document = {"meta": meta, "scores": scores, "diversity": diversity, "samples": samples}
    json_path = write_atomic(out / "report.json", json.dumps(document, indent=1, ensure_ascii=False,
                                                              default=str) + "\n")
    html_path = write_atomic(out / "report.html", _html(meta, scores, diversity, samples, max_samples))
    return json_path, html_path


def _plain_sample(sample: dict) -> dict:
    """The sample with its path as a string, so the JSON holds what the HTML shows."""
    plain = dict(sample)
    if "path" in plain:
        plain["path"] = str(plain["path"])
    plain["references"] = list(plain.get("references", []))
    return plain


def _html(meta: dict, scores: dict, diversity: dict, samples: list[dict], max_samples: int) -> str:
    e = _escape
    title = f"Caption report: {meta['model']}" if meta.get("model") else "Caption report"
    shown = samples[:max(0, max_samples)]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        '<div class="tables">',
        _table("Metrics", scores, _metric_value),
        _table("Diversity", diversity, _diversity_value),
        _table("Run", meta, lambda k, v: e(_plain(v)), numeric=False),
        "</div>",
        "<h2>Samples</h2>",
    ]
    if len(shown) < len(samples):
        parts.append(f'<p class="note">{len(shown)} of {len(samples)} samples shown; '
                     "report.json holds them all.</p>")
    parts.append('<div class="grid">')
    parts.extend(_card(s) for s in shown)
    parts.append("</div></body></html>\n")
    return "\n".join(parts)


def _table(heading: str, values: dict, show, numeric: bool = True) -> str:
    cell = '<td class="num">' if numeric else "<td>"
    rows = "".join(f"<tr><th>{_escape(k)}</th>{cell}{show(k, v)}</td></tr>" for k, v in values.items())
    return f"<section><h2>{_escape(heading)}</h2><table>{rows}</table></section>"


def _metric_value(key: Any, value: Any) -> str:
    """Scores as papers print them (one decimal); counts as whole numbers."""
    if isinstance(value, float):
        return f"{value:.1f}"
    return _escape(_plain(value))


def _diversity_value(key: Any, value: Any) -> str:
    if isinstance(value, float) and key in ("distinct_captions", "repeated_word"):
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.2f}"
    return _escape(_plain(value))


def _card(sample: dict) -> str:
    e = _escape
    caption = str(sample.get("caption", ""))
    path = sample.get("path")
    thumb = _thumbnail(path) if path else None
    if thumb:
        image = f'<img src="data:image/jpeg;base64,{thumb}" alt="{e(caption)}">'
    else:
        image = f'<div class="nophoto" role="img" aria-label="{e(caption)}">photo not readable</div>'
    logp = ""
    if sample.get("score") is not None:
        try:
            logp = f'<div class="logp">log-probability {float(sample["score"]):.2f}</div>'
        except (TypeError, ValueError):
            logp = f'<div class="logp">score {e(_plain(sample["score"]))}</div>'
    refs = "".join(f"<li>{e(r)}</li>" for r in sample.get("references", []))
    name = f'<div class="file">{e(Path(str(path)).name)}</div>' if path else ""
    return (f'<div class="card">{image}<div class="caption">{e(caption)}</div>{logp}'
            f"{f'<ul>{refs}</ul>' if refs else ''}{name}</div>")


def _thumbnail(path: Any) -> str | None:
    """A ~160 px JPEG of the photo, base64-encoded; None when it cannot be read."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.draft("RGB", (2 * THUMBNAIL_PX, 2 * THUMBNAIL_PX))  # big JPEGs decode at a fraction of the size
            img = ImageOps.exif_transpose(img).convert("RGB")
            img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)
