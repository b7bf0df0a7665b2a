"""Page ready: in Chromium, the time from dropping a photo on the page to its caption being shown.

    python benchmarks/page_ready.py                     # 20 drops of examples/*.jpg, the shipped model
    python benchmarks/page_ready.py --runs 3
    python benchmarks/page_ready.py --gallery G.db --screenshot docs/web.png

Starts the server in a separate process (as web_load.py does), opens the page
in Debian's Chromium (/usr/bin/chromium, driven by Playwright), and for each
run drops a photo on the page the way a browser does (a `drop` event with the
file) and waits, inside the page, until the caption is on it and the next
frame is painted. The first drop is reported apart (it warms the model); the
goal in the issue is a caption within 1.5 s of the drop.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

from web_load import ROOT, running_server

CHROMIUM = "/usr/bin/chromium"

DROP_AND_WAIT = """async ([data, name]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
  const settled = new Promise((resolve) => {
    const watch = new MutationObserver(() => {
      if (document.body.dataset.state === "ready" || document.body.dataset.state === "error") {
        watch.disconnect();
        requestAnimationFrame(() => resolve(performance.now()));  // the caption painted
      }
    });
    watch.observe(document.body, { attributes: true, attributeFilter: ["data-state"] });
  });
  const start = performance.now();
  document.getElementById("drop").dispatchEvent(
    new DragEvent("drop", { bubbles: true, cancelable: true, dataTransfer: transfer }));
  const end = await settled;
  return { ms: end - start, state: document.body.dataset.state, caption: document.getElementById("photo").alt };
}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--model", help="model folder for the started server (default: the shipped model)")
    parser.add_argument("--gallery", help="gallery for the started server (the page then shows similar photos)")
    parser.add_argument("--photos", default=str(ROOT / "examples"), help="folder of JPEGs to drop (default examples/)")
    parser.add_argument("--runs", type=int, default=20, help="timed drops after the first (default 20)")
    parser.add_argument("--screenshot", help="also save a screenshot of the page with a caption here")
    args = parser.parse_args()

    photos = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:100]
    if not photos:
        raise SystemExit(f"no JPEGs in {args.photos}")
    data = {p: base64.b64encode(p.read_bytes()).decode() for p in photos}
    server = contextlib.nullcontext((args.url, None)) if args.url else running_server(args.model, args.gallery)
    with server as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('limit').textContent.includes('up to')")
        times = []
        for i in range(args.runs + 1):
            photo = photos[i % len(photos)]
            result = page.evaluate(DROP_AND_WAIT, [data[photo], photo.name])
            if result["state"] != "ready":
                raise SystemExit(f"{photo.name}: the page showed an error: {page.locator('#error').inner_text()}")
            times.append(result["ms"])
        if args.screenshot:
            _screenshot(page, data, photos, Path(args.screenshot))
        browser.close()
    first, rest = times[0], np.array(times[1:])
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"Chromium, drop to caption shown, {len(rest)} drops of {len(photos)} JPEGs from {args.photos}")
    print(f"first drop (warm-up): {first:.0f} ms")
    print(f"median {np.median(rest):.0f} ms, p90 {np.percentile(rest, 90):.0f} ms, max {rest.max():.0f} ms")
    met = rest.max() <= 1500
    print(f"goal (caption within 1.5 s of the drop, every drop): {'met' if met else 'NOT met'}")
    return 0 if met else 1


def _screenshot(page, data: dict, photos: list[Path], path: Path) -> None:
    """The page with a caption, its last word's attention shown and (with a gallery) similar photos.

    Saved in 256 colours, small enough for the README.
    """
    photo = next((p for p in photos if "cliff" in p.name), photos[0])
    page.evaluate(DROP_AND_WAIT, [data[photo], photo.name])
    page.wait_for_function("[...document.images].every((img) => img.complete)")
    page.locator("#words button").last.hover()
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    shot.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"screenshot: {path} ({path.stat().st_size / 1024:.0f} KB)")

if __name__ == "__main__":
    sys.exit(main())
