// captioner's page: send a photo, show its caption, alternatives, attention, similar photos; search; play a
// video scene the gallery found from its start.
"use strict";

const $ = (id) => document.getElementById(id);
const page = {
  maxUpload: null,   // bytes, from /api/health
  current: null,     // the caption shown (the JSON of /api/caption)
  request: 0,        // the latest request's number: answers to older ones are dropped
};

// ---- talking to the server ----

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch {
    throw new Error("The captioner server cannot be reached; check that `captioner serve` is still running.");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : `The server answered ${response.status}.`;
    const error = new Error(detail);
    error.status = response.status;
    if (response.status === 401) askForToken();
    throw error;
  }
  return body;
}

function mebibytes(bytes) {
  return `${Number((bytes / 2 ** 20).toPrecision(3))} MiB`;
}

// ---- state shown to the user ----

function setState(state, message = "") {
  document.body.dataset.state = state;
  $("status").textContent = state === "busy" ? message : "";
  $("error").hidden = state !== "error";
  $("error").textContent = state === "error" ? message : "";
}

// ---- captioning ----

async function captionFile(file) {
  if (!file) return;
  if (page.maxUpload !== null && file.size > page.maxUpload) {
    setState("error", `The photo is ${mebibytes(file.size)}, more than the ${mebibytes(page.maxUpload)} limit; `
      + "send a smaller photo (shrink or export it again).");
    return;
  }
  const name = file.name || "the pasted photo";
  const form = new FormData();
  form.append("file", file, file.name || "pasted.png");
  await show(`Captioning ${name}…`, URL.createObjectURL(file),
             () => api("/api/caption", { method: "POST", body: form }), "Your photo");
}

async function explore(match) {
  await show(`Captioning ${match.name}…`, match.url,
             () => api(`/api/photo/${match.id}/caption`), `${match.name}, from the gallery`);
  $("result-title").focus();
}

async function show(busyMessage, photoUrl, ask, title) {
  const request = ++page.request;
  setState("busy", busyMessage);
  let answer;
  try {
    answer = await ask();
  } catch (error) {
    if (request === page.request) setState("error", error.message);
    return;
  }
  if (request !== page.request) return;
  hideScene();
  page.current = answer;
  const photo = $("photo");
  if (photo.src.startsWith("blob:")) URL.revokeObjectURL(photo.src);
  photo.alt = answer.said;
  photo.src = photoUrl;
  $("result-title").textContent = title;
  $("caption").textContent = `Caption: ${answer.said}`;
  showWords(answer);
  showConfidence(answer);
  showTags(answer.tags);
  showAlternatives(answer.alternatives);
  $("warning").hidden = !answer.warning;
  $("warning").textContent = answer.warning;
  $("result").hidden = false;
  clearAttention();
  if (answer.similar) showMatches($("similar"), answer.similar, "No similar photos in the gallery.");
  $("similar-section").hidden = !answer.similar;
  setState("ready");
}

function showWords(answer) {
  const words = $("words");
  words.replaceChildren(...answer.words.map((word, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "word";
    button.textContent = word;
    button.dataset.index = i;
    if (answer.attention) {
      button.addEventListener("mouseenter", () => showAttention(i));
      button.addEventListener("focus", () => showAttention(i));
      button.addEventListener("click", () => showAttention(i));
    }
    return button;
  }));
  words.onmouseleave = clearAttention;
  words.onfocusout = (event) => { if (!words.contains(event.relatedTarget)) clearAttention(); };
  $("looking").hidden = !answer.attention;
}

function showConfidence({ confidence, doubt }) {
  const line = $("confidence");
  line.hidden = confidence === null;
  if (confidence === null) return;
  const percent = `${Math.round(confidence * 100)}%`;
  line.classList.toggle("low", doubt === 2);
  line.textContent = [`Confidence ${percent}.`, `Probably right (confidence ${percent}).`,
    `Not sure (confidence ${percent}): it may be what it says, or not.`][doubt];
}

function showTags(tags) {
  $("tags").textContent = tags.map(({ label, p }) => `${label} ${Math.round(p * 100)}%`).join(", ");
  $("tags-line").hidden = tags.length === 0;
}

function showAlternatives(alternatives) {
  const list = $("alternatives");
  list.replaceChildren(...alternatives.map(({ caption, score }) => {
    const item = document.createElement("li");
    const text = document.createElement("span");
    text.textContent = caption;
    const value = document.createElement("span");
    value.className = "score";
    value.textContent = score.toFixed(2);
    item.append(text, " ", value);
    return item;
  }));
  list.previousElementSibling.hidden = list.nextElementSibling.hidden = alternatives.length === 0;
}

// ---- attention: the photo darkened away from where a word looked ----

function showAttention(index) {
  const { attention, words } = page.current;
  const canvas = $("attention");
  const photo = $("photo");
  const scale = window.devicePixelRatio || 1;
  canvas.width = Math.round(photo.clientWidth * scale);
  canvas.height = Math.round(photo.clientHeight * scale);
  const side = attention.grid;
  const map = attention.maps[index];
  const peak = Math.max(...map, 1e-8);
  const cells = new ImageData(side, side);
  map.forEach((weight, i) => {
    cells.data[i * 4 + 3] = Math.round(255 * 0.78 * (1 - weight / peak));  // black, see-through where it looked
  });
  const grid = document.createElement("canvas");
  grid.width = grid.height = side;
  grid.getContext("2d").putImageData(cells, 0, 0);
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.drawImage(grid, 0, 0, canvas.width, canvas.height);
  canvas.dataset.word = index;
  for (const button of $("words").children) button.classList.toggle("active", button.dataset.index == index);
  $("looking").textContent = `Where the model looked when it wrote “${words[index]}”.`;
}

function clearAttention() {
  const canvas = $("attention");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  delete canvas.dataset.word;
  for (const button of $("words").children) button.classList.remove("active");
  $("looking").textContent = "Hover over or focus a word to see where the model looked.";
}

// ---- a video scene: played from its start, with the gallery's items like it ----

function clock(seconds) {  // 0:04.0, 1:02:05.5
  const tenths = Math.round(seconds * 10);
  const hours = Math.floor(tenths / 36000);
  const minutes = Math.floor(tenths / 600) % 60;
  const rest = ((tenths % 600) / 10).toFixed(1).padStart(4, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${rest}` : `${minutes}:${rest}`;
}

function when(match) {
  return `${match.name} ${clock(match.start)}–${clock(match.end)}`;
}

async function playScene(match) {
  const request = ++page.request;
  setState("busy", `Finding what is like ${when(match)}…`);
  $("result").hidden = true;
  const video = $("scene-video");
  video.onloadedmetadata = () => {  // a player that ignores the #t fragment still starts at the scene
    if (Math.abs(video.currentTime - match.start) > 0.25) video.currentTime = match.start;
  };
  video.src = `${match.video}#t=${match.start},${match.end}`;
  video.dataset.start = match.start;
  $("scene-title").textContent = when(match);
  $("scene-caption").textContent = `Caption: ${match.caption}`;
  $("scene").hidden = false;
  $("scene-title").focus();
  let answer;
  try {
    answer = await api(`/api/similar?id=${match.id}`);
  } catch (error) {
    if (request === page.request) setState("error", error.message);
    return;
  }
  if (request !== page.request) return;
  showMatches($("similar"), answer.results, "Nothing similar in the gallery.");
  $("similar-section").hidden = false;
  setState("ready");
}

function hideScene() {
  const video = $("scene-video");
  video.pause();
  video.removeAttribute("src");
  video.load();  // lets the file go
  $("scene").hidden = true;
}

// ---- gallery: similar photos and search ----

function showMatches(list, matches, emptyMessage) {
  if (matches.length === 0) {
    const item = document.createElement("li");
    item.className = "empty";
    item.textContent = emptyMessage;
    list.replaceChildren(item);
    return;
  }
  list.replaceChildren(...matches.map((match) => {
    const item = document.createElement("li");
    if (match.weak) item.className = "weak";  // a search match below the embedding's weak score
    const button = document.createElement("button");
    button.type = "button";
    button.className = "match";
    button.dataset.id = match.id;
    const image = document.createElement("img");
    image.src = match.thumbnail;
    image.alt = match.video ? `A scene of ${when(match)}: ${match.caption}` : match.caption;
    image.loading = "lazy";
    const text = document.createElement("span");
    text.className = "match-caption";
    text.textContent = match.caption;
    text.setAttribute("aria-hidden", "true");  // the image's alt text already says it
    button.append(image, text);
    if (match.video) {
      const time = document.createElement("span");
      time.className = "match-time";
      time.textContent = `▶ ${when(match)}`;
      time.setAttribute("aria-hidden", "true");
      button.classList.add("scene");
      button.prepend(time);
    }
    button.addEventListener("click", () => (match.video ? playScene(match) : explore(match)));
    item.append(button);
    return item;
  }));
}

async function search(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) return;
  const status = $("search-status");
  status.textContent = "Searching…";
  status.classList.remove("error");
  try {
    const answer = await api(`/api/search?q=${encodeURIComponent(query)}`);
    showMatches($("search-results"), answer.results, "");
    if (!answer.results.length) status.textContent = `No photo matches “${query}”.`;
    else if (answer.weak) {
      status.textContent = `Nothing in the gallery matches “${query}” well. The closest photos:`;
    } else {
      const good = answer.results.filter((match) => !match.weak).length;
      status.textContent = `${good} ${good === 1 ? "photo matches" : "photos match"} “${query}” well`
        + (good < answer.results.length ? `; then ${answer.results.length - good} weaker.` : ".");
    }
  } catch (error) {
    status.textContent = error.message;
    status.classList.add("error");
  }
}

// ---- getting a photo in: pick, drop, paste ----

function firstImage(items) {
  return Array.from(items || []).find((file) => file && file.type.startsWith("image/"))
    || Array.from(items || [])[0];
}

function listen() {
  const drop = $("drop");
  $("choose").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", (event) => {
    captionFile(event.target.files[0]);
    event.target.value = "";  // choosing the same file again still captions it
  });
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) drop.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    captionFile(firstImage(event.dataTransfer.files));
  });
  document.addEventListener("paste", (event) => {
    const file = firstImage(event.clipboardData.files);
    if (file) {
      event.preventDefault();
      captionFile(file);
    }
  });
  $("speak").addEventListener("click", () => {
    if (!page.current) return;
    speechSynthesis.cancel();
    speechSynthesis.speak(new SpeechSynthesisUtterance(page.current.said));
  });
  $("search-form").addEventListener("submit", search);
  window.addEventListener("resize", () => {
    const word = $("attention").dataset.word;
    if (word !== undefined) showAttention(Number(word));
  });
}

// ---- the access token (when the server has one): exchanged once for an HttpOnly session cookie ----

function askForToken() {
  $("token-section").hidden = false;
  $("token").focus();
}

async function sendToken(event) {
  event.preventDefault();
  try {
    await api("/api/session", { method: "POST", headers: { Authorization: `Bearer ${$("token").value}` } });
  } catch (error) {
    setState("error", error.message);
    return;
  }
  $("token").value = "";
  $("token-section").hidden = true;
  setState("idle");
  await askHealth();
}

async function start() {
  listen();
  $("token-form").addEventListener("submit", sendToken);
  $("speak").hidden = !("speechSynthesis" in window);
  await askHealth();
}

async function askHealth() {
  try {
    const health = await api("/api/health");
    page.maxUpload = health.max_upload_bytes;
    $("limit").textContent = `JPEG, PNG, WebP, GIF, BMP or TIFF, up to ${mebibytes(page.maxUpload)}.`;
    $("search-section").hidden = health.gallery_photos === null;
  } catch (error) {
    setState("error", error.message);
  }
}

start();
