"""The web page in real Chromium (Debian's, driven by Playwright): upload, attention, similar photos, search,
errors, keyboard and phone width. Screenshots are kept in test-artifacts/web/."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from captioner.models.confidence import FEATURES, Confidence
from captioner.web.app import create_app
from conftest import TINY_MAX_LEN
from photos import bomb_png_bytes, gradient
from webapp import EXAMPLES, LiveServer, examples_gallery, tiny_captioner

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "web"
LIMIT = 200 * 1024  # the test server's upload limit: the example photos are below it
TOKEN = "browser-test-token"  # the test server needs it: the page asks for it once

if not CHROMIUM.exists():
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)",
                allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402  (only once Chromium is known to be there)

READ_ALOUD_SPY = """
window.spoken = [];
window.speechSynthesis.speak = (utterance) => window.spoken.push(utterance.text);
"""

DROP = """([data, name, type, event]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type }));
  const init = { bubbles: true, cancelable: true };
  const target = document.getElementById("drop");
  target.dispatchEvent(event === "drop" ? new DragEvent("drop", { ...init, dataTransfer: transfer })
                                        : new ClipboardEvent("paste", { ...init, clipboardData: transfer }));
}"""


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    captioner = tiny_captioner(tiny_model_dir)
    gallery = examples_gallery(tmp_path_factory.mktemp("browser-gallery"), captioner)
    with LiveServer(create_app(captioner, gallery, max_upload_bytes=LIMIT, token=TOKEN)) as url:
        yield url, gallery


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.add_init_script(READ_ALOUD_SPY)
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    open_with_token(page, server[0])
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def open_with_token(page, url: str) -> None:
    """Load the page and give it the server's token, as a user does once."""
    page.goto(url + "/")
    token = page.get_by_label("The token captioner serve was started with")
    expect(token).to_be_focused()
    token.fill(TOKEN)
    page.keyboard.press("Enter")
    expect(page.locator("#limit")).to_contain_text("up to 0.195 MiB")  # /api/health has answered
    expect(page.locator("#token-section")).to_be_hidden()


def test_a_wrong_token_is_refused_in_words_and_the_right_one_then_works(browser, server):
    context = browser.new_context()
    page = context.new_page()
    page.goto(server[0] + "/")
    page.get_by_label("The token captioner serve was started with").fill("not the token")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("The access token is wrong")
    cookies = context.cookies()
    assert cookies == []
    page.get_by_label("The token captioner serve was started with").fill(TOKEN)
    page.keyboard.press("Enter")
    expect(page.locator("#limit")).to_contain_text("up to 0.195 MiB")
    [cookie] = context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # out of reach of scripts
    context.close()


def caption_of(page) -> str:
    expect(page.locator("body")).to_have_attribute("data-state", "ready")
    return page.locator("#photo").get_attribute("alt")


def send(page, data: bytes, name: str, media: str, how: str) -> None:
    page.evaluate(DROP, [base64.b64encode(data).decode(), name, media, how])


def attention_pixels(page) -> list[int]:
    """The attention overlay's alpha channel, sampled on a coarse grid."""
    return page.evaluate("""() => {
      const canvas = document.getElementById("attention");
      if (!canvas.width || !canvas.height) return [];
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      const out = [];
      for (let y = 0; y < 20; y++) for (let x = 0; x < 20; x++) {
        const px = Math.floor((x + 0.5) * canvas.width / 20), py = Math.floor((y + 0.5) * canvas.height / 20);
        out.push(data[(py * canvas.width + px) * 4 + 3]);
      }
      return out;
    }""")


def test_pick_a_photo_and_see_its_caption_alternatives_and_similar_photos(page):
    page.set_input_files("#file", EXAMPLES / "rocky_cliff_by_a_lake.jpg")
    caption = caption_of(page)
    words = page.locator("#words button")
    expect(words).to_have_count(TINY_MAX_LEN)
    assert " ".join(words.all_inner_texts()) == caption
    expect(page.locator("#caption")).to_have_text(f"Caption: {caption}")  # the aria-live region
    assert page.locator("#caption").get_attribute("aria-live") == "polite"
    expect(page.locator("#alternatives li")).to_have_count(2)
    expect(page.locator("#similar img")).to_have_count(5)  # the gallery's own copy is left out
    page.wait_for_function("() => [...document.images].every((img) => img.complete)")
    missing_alt = page.evaluate("() => [...document.images].filter((img) => !img.alt.trim()).map((i) => i.src)")
    assert missing_alt == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#words button").nth(2).hover()
    page.screenshot(path=ARTIFACTS / "caption.png", full_page=True)
    print(f"screenshot: {ARTIFACTS / 'caption.png'}")


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_drop_or_paste_a_photo(page, how):
    send(page, (EXAMPLES / "tabby_cat.jpg").read_bytes(), "tabby_cat.jpg", "image/jpeg", how)
    assert len(caption_of(page).split()) == TINY_MAX_LEN
    expect(page.locator("#result-title")).to_have_text("Your photo")


def test_hovering_a_word_shows_where_it_looked(page):
    page.set_input_files("#file", EXAMPLES / "man_with_camera_on_tripod.jpg")
    caption_of(page)
    page.wait_for_function("() => document.getElementById('photo').complete")
    words = page.locator("#words button")
    words.nth(0).hover()
    expect(page.locator("#attention")).to_have_attribute("data-word", "0")
    first = attention_pixels(page)
    words.nth(5).hover()
    expect(page.locator("#attention")).to_have_attribute("data-word", "5")
    sixth = attention_pixels(page)
    assert len(first) == len(sixth) == 400
    assert max(first) > 0 and max(sixth) > 0  # the photo is darkened away from the word's attention
    assert first != sixth
    word = words.nth(5).inner_text()
    expect(page.locator("#looking")).to_have_text(f"Where the model looked when it wrote “{word}”.")
    page.mouse.move(5, 5)  # off the caption: the photo shows plain again
    expect(page.locator("#attention")).not_to_have_attribute("data-word", "5")
    assert max(attention_pixels(page)) == 0


def test_read_aloud_speaks_the_caption(page):
    page.set_input_files("#file", EXAMPLES / "tabby_cat.jpg")
    caption = caption_of(page)
    page.get_by_role("button", name="Read aloud").click()
    assert page.evaluate("window.spoken") == [caption]


def test_click_a_similar_photo_to_explore_from_it(page, server):
    gallery = server[1]
    page.set_input_files("#file", EXAMPLES / "rocky_cliff_by_a_lake.jpg")
    caption_of(page)
    choice = page.locator("#similar button").nth(1)
    chosen = gallery.photo(int(choice.get_attribute("data-id")))
    choice.click()
    expect(page.locator("#result-title")).to_have_text(f"{chosen.path.name}, from the gallery")
    assert caption_of(page) == chosen.caption
    assert page.locator("#photo").get_attribute("src") == f"/api/photo/{chosen.id}"
    shown = {int(i) for i in page.locator("#similar button").evaluate_all("bs => bs.map((b) => b.dataset.id)")}
    assert len(shown) == 5 and chosen.id not in shown
    expect(page.locator("#result-title")).to_be_focused()  # keyboard users land on what they chose


def test_search_the_gallery_by_description(page, server):
    gallery = server[1]
    tripod = next(gallery.photo(i) for i in range(1, 7) if gallery.photo(i).path.name.startswith("man_with"))
    page.get_by_label("Describe the photos you are looking for").fill(tripod.caption)
    page.keyboard.press("Enter")
    results = page.locator("#search-results button")
    expect(results).to_have_count(6)
    expect(page.locator("#search-status")).to_have_text(f"6 photos match “{tripod.caption}” well.")
    assert results.first.get_attribute("data-id") == str(tripod.id)
    assert results.first.locator("img").get_attribute("alt") == tripod.caption
    results.first.click()
    assert caption_of(page) == tripod.caption


def test_a_search_that_matches_nothing_well_says_so(page, server):
    """The page's side of a weak answer (the API's is tested with a real embedding in test_web_api)."""
    gallery = server[1]
    first = gallery.photo(1)
    answer = {"query": "a spreadsheet", "weak": True, "results": [
        {"id": first.id, "name": first.path.name, "caption": first.caption, "score": 0.12, "weak": True,
         "matched_by": "caption", "url": f"/api/photo/{first.id}", "thumbnail": f"/api/photo/{first.id}/thumbnail"}]}
    page.route("**/api/search?*", lambda route: route.fulfill(json=answer))
    page.get_by_label("Describe the photos you are looking for").fill("a spreadsheet")
    page.keyboard.press("Enter")
    expect(page.locator("#search-status")).to_have_text(
        "Nothing in the gallery matches “a spreadsheet” well. The closest photos:")
    expect(page.locator("#search-results li.weak")).to_have_count(1)
    assert page.locator("#search-results li.weak img").evaluate("img => getComputedStyle(img).opacity") == "0.6"


def test_everything_works_by_keyboard_with_a_visible_focus(page):
    page.keyboard.press("Tab")
    expect(page.locator("#choose")).to_be_focused()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    page.set_input_files("#file", EXAMPLES / "astronaut_in_orange_spacesuit.jpg")
    caption_of(page)
    page.locator("#words button").first.focus()
    page.keyboard.press("Tab")  # to the second word
    expect(page.locator("#words button").nth(1)).to_be_focused()
    expect(page.locator("#attention")).to_have_attribute("data-word", "1")
    first_similar = page.locator("#similar button").first
    first_similar.focus()
    chosen = first_similar.get_attribute("data-id")
    page.keyboard.press("Enter")
    expect(page.locator("#photo")).to_have_attribute("src", f"/api/photo/{chosen}")
    expect(page.locator("#result-title")).to_be_focused()


@pytest.mark.parametrize("name, media, data, message", [
    ("notes.txt", "text/plain", b"holiday notes", "notes.txt is text/plain, not a photo; send a JPEG"),
    ("notes.jpg", "image/jpeg", b"holiday notes", "notes.jpg: is not a photo in a format captioner reads (a JPEG"),
    ("bomb.png", "image/png", bomb_png_bytes(), "bomb.png: declares 3,600 megapixels, more than the 179-megapixel"),
    ("huge.bmp", "image/bmp", bytes(300 * 1024), "The photo is 0.293 MiB, more than the 0.195 MiB limit"),
])
def test_each_refused_file_says_why_in_the_page(page, name, media, data, message):
    send(page, data, name, media, "drop")
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text(message)
    expect(page.locator("body")).to_have_attribute("data-state", "error")
    send(page, (EXAMPLES / "tabby_cat.jpg").read_bytes(), "tabby_cat.jpg", "image/jpeg", "drop")
    caption_of(page)
    expect(alert).to_be_hidden()  # a good photo clears the message


def test_the_page_fits_a_phone(browser, server):
    context = browser.new_context(viewport={"width": 375, "height": 800}, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    open_with_token(page, server[0])
    out = io.BytesIO()
    Image.fromarray(gradient(640, 480)).save(out, "JPEG")
    send(page, out.getvalue(), "phone.jpg", "image/jpeg", "drop")
    caption_of(page)
    expect(page.locator("#similar img")).to_have_count(6)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    box = page.locator("#photo").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 375
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "phone.png", full_page=True)
    context.close()


@pytest.mark.parametrize("bias, shown, hedge", [(-3.0, "Not sure (confidence 5%)", "I am not sure; it may be "),
                                                (0.5, "Probably right (confidence 62%)", "probably "),
                                                (3.0, "Confidence 95%.", "")])
def test_a_doubtful_caption_is_shown_and_read_aloud_with_its_doubt(browser, tiny_model_dir, bias, shown, hedge):
    captioner = tiny_captioner(tiny_model_dir)
    captioner.centroids = torch.nn.functional.normalize(torch.randn(4, 1280), dim=1)
    # A calibration that gives every caption the same confidence, sigmoid(bias): 5%, 62% or 95%; plain from 70%.
    captioner.confidence = Confidence(torch.zeros(len(FEATURES)), torch.tensor(bias), torch.zeros(len(FEATURES)),
                                      torch.ones(len(FEATURES)), plain=0.7)
    with LiveServer(create_app(captioner)) as url:
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        context.add_init_script(READ_ALOUD_SPY)
        page = context.new_page()
        page.goto(url + "/")
        page.set_input_files("#file", EXAMPLES / "tabby_cat.jpg")
        said = caption_of(page)
        caption = " ".join(page.locator("#words button").all_inner_texts())
        assert said == hedge + caption
        expect(page.locator("#caption")).to_have_text(f"Caption: {said}")
        expect(page.locator("#confidence")).to_contain_text(shown)
        expect(page.locator("#tags-line")).to_contain_text("cat")  # lite0's classifier knows a tabby
        page.get_by_role("button", name="Read aloud").click()
        assert page.evaluate("window.spoken") == [said]
        context.close()


def test_the_api_docs_render_under_the_content_security_policy(browser, server):
    context = browser.new_context()
    page = context.new_page()
    refused = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(server[0] + "/docs")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()  # Swagger UI ran and read the schema
    assert page.locator(".opblock-summary-path").count() >= 8
    assert refused == []
    context.close()


@pytest.fixture(scope="module")
def video_server(tiny_model_dir, tmp_path_factory):
    from test_web_video import video_gallery

    captioner = tiny_captioner(tiny_model_dir)
    gallery = video_gallery(tmp_path_factory.mktemp("browser-video-gallery"), captioner)
    with LiveServer(create_app(captioner, gallery, max_upload_bytes=LIMIT, token=TOKEN)) as url:
        yield url, gallery


def test_a_found_scene_shows_its_keyframe_and_plays_from_its_start(browser, video_server):
    url, gallery = video_server
    scene = [m for m in (gallery.photo(i) for i in range(1, 20)) if m is not None and m.scene][1]
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors, videos = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("response", lambda r: videos.append((r.status, r.headers.get("content-range")))
            if "/api/video/" in r.url else None)
    open_with_token(page, url)
    page.get_by_label("Describe the photos you are looking for").fill(scene.caption)
    page.keyboard.press("Enter")
    found = page.locator(f'#search-results button[data-id="{scene.id}"]')
    minutes = lambda t: f"0:{round(t, 1):04.1f}"  # noqa: E731
    expect(found).to_contain_text(f"clip.mp4 {minutes(scene.start)}–{minutes(scene.end)}")
    expect(found.locator("img")).to_have_attribute("alt", f"A scene of clip.mp4 {minutes(scene.start)}–"
                                                          f"{minutes(scene.end)}: {scene.caption}")
    page.wait_for_function(f"""() => document.querySelector('#search-results button[data-id="{scene.id}"] img')
                                     .naturalWidth > 0""")  # the keyframe thumbnail loaded
    found.click()
    video = page.locator("#scene-video")
    expect(page.locator("#scene-title")).to_have_text(f"clip.mp4 {minutes(scene.start)}–{minutes(scene.end)}")
    expect(video).to_have_attribute("src", f"/api/video/{scene.id}#t={scene.start:g},{scene.end:g}")
    page.wait_for_function("() => document.getElementById('scene-video').readyState >= 1")  # metadata read
    assert page.evaluate("document.getElementById('scene-video').error") is None
    assert abs(page.evaluate("document.getElementById('scene-video').currentTime") - scene.start) < 0.3
    assert any(status == 206 and (where or "").startswith("bytes 0-") for status, where in videos), videos
    expect(page.locator("#similar button")).not_to_have_count(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "scene.png"))
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
