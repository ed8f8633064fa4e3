// TinyTales page: asks POST /api/story (the page's own protocol) for a streamed story (Server-Sent
// Events over fetch, since EventSource cannot POST) and shows it word by word. No libraries, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  prompt: $("prompt"), ideas: $("ideas"), tell: $("tell"), stop: $("stop"), again: $("again"),
  notice: $("notice"), card: $("story-card"), story: $("story"), thinking: $("thinking"),
  note: $("story-note"), stats: $("stats"), about: $("about"), safetyLine: $("safety-line"),
  maxNewTokens: $("max_new_tokens"), seed: $("seed"), words: $("words"),
};
let controller = null; // AbortController of the story being told

// ------------------------------------------------------------------ settings

function chosen(name) {
  return document.querySelector(`input[name="${name}"]:checked`).value;
}

function settings() {
  const method = chosen("method");
  const body = { prompt: ui.prompt.value, method, max_new_tokens: Number(ui.maxNewTokens.value) || 200, stream: true };
  if (method === "sample") {
    body.temperature = Number($("temperature").value);
    body.top_p = Number($("top_p").value);
    body.top_k = Number($("top_k").value) || 0;
  } else if (method === "beam") {
    body.num_beams = Number($("num_beams").value) || 4;
  }
  if (ui.seed.value !== "") body.seed = Number(ui.seed.value);
  const words = ui.words.value.split(/[,\s]+/).filter(Boolean);
  const features = [...document.querySelectorAll('input[name="feature"]:checked')].map((box) => box.value);
  if (words.length) body.words = words;
  if (features.length) body.features = features;
  return body;
}

function showMethodSettings() {
  const method = chosen("method");
  document.querySelectorAll(".grid label[data-for]").forEach((label) => {
    const on = label.dataset.for === method;
    label.classList.toggle("off", !on);
    label.querySelector("input").disabled = !on;
  });
}

for (const id of ["temperature", "top_p"]) {
  $(id).addEventListener("input", () => { $(`${id}-out`).textContent = $(id).value; });
}
document.querySelectorAll('input[name="method"]').forEach((r) => r.addEventListener("change", showMethodSettings));
// a story ends happily or sadly, not both
const endings = { HappyEnding: "SadEnding", SadEnding: "HappyEnding" };
document.querySelectorAll('input[name="feature"]').forEach((box) => box.addEventListener("change", () => {
  const other = endings[box.value] && document.querySelector(`input[name="feature"][value="${endings[box.value]}"]`);
  if (box.checked && other) other.checked = false;
}));
document.querySelectorAll('input[name="length"]').forEach((r) =>
  r.addEventListener("change", () => { ui.maxNewTokens.value = r.value; }));

// ------------------------------------------------------------------ showing the story

function setTelling(telling) {
  ui.tell.disabled = telling;
  ui.stop.hidden = !telling;
  ui.again.hidden = telling;
  ui.story.classList.toggle("telling", telling);
  ui.story.setAttribute("aria-busy", String(telling));
}

function say(message) {
  ui.notice.textContent = message || "";
  ui.notice.hidden = !message;
}

function addWords(text) {
  // each word fades in on its own: the story appears word by word
  for (const part of text.split(/(\s+)/)) {
    if (!part) continue;
    if (/^\s+$/.test(part)) {
      ui.story.append(document.createTextNode(part));
    } else {
      const span = document.createElement("span");
      span.className = "word";
      span.textContent = part;
      ui.story.append(span);
    }
  }
}

function startStory(prompt) {
  ui.card.hidden = false;
  ui.story.textContent = "";
  const lead = document.createElement("span");
  lead.className = "prompt-text";
  lead.textContent = prompt;
  ui.story.append(lead);
  ui.note.hidden = true;
  ui.story.classList.remove("cut");
  ui.stats.textContent = "";
  ui.thinking.hidden = false;
}

function finishStory(done) {
  ui.thinking.hidden = true;
  ui.story.classList.toggle("cut", done.finish_reason === "length" || done.finish_reason === "cancelled");
  const note = done.message || (done.prompt_truncated
    ? "The beginning was long, so the storyteller only read its last part." : "");
  ui.note.textContent = note;
  ui.note.hidden = !note;
  const words = ui.story.textContent.trim().split(/\s+/).length;
  const rate = done.tokens_per_second ? `, ${Math.round(done.tokens_per_second)} tokens a second` : "";
  const why = { length: " (it reached the length limit)", cancelled: " (stopped)" }[done.finish_reason] || "";
  const time = done.seconds ? ` in ${done.seconds.toFixed(1)} s${rate}` : "";
  ui.stats.textContent = `${words} words${time}${why}`;
}

// ------------------------------------------------------------------ talking to the server

function* sseEvents(buffer) {
  // complete "event: x\ndata: {...}\n\n" blocks; returns what is left over
  let end;
  while ((end = buffer.text.indexOf("\n\n")) >= 0) {
    const block = buffer.text.slice(0, end);
    buffer.text = buffer.text.slice(end + 2);
    let event = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    if (data) yield { event, data: JSON.parse(data) };
  }
}

async function tellStory() {
  if (controller) return;
  const body = settings();
  if (!body.prompt.trim() && !body.words && !body.features) {
    say("Write how the story should begin, pick one of the ideas, or choose some story ingredients!");
    ui.prompt.focus();
    return;
  }
  say("");
  controller = new AbortController();
  setTelling(true);
  startStory(body.prompt);
  let done = null;
  try {
    const response = await fetch("/api/story", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      const message = (answer.error && answer.error.message) || `The storyteller said no (${response.status}).`;
      ui.card.hidden = true;
      say(response.status === 503 ? "Lots of stories are being told right now. Try again in a moment!" : message);
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const buffer = { text: "" };
    for (;;) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      buffer.text += decoder.decode(value, { stream: true });
      for (const { event, data } of sseEvents(buffer)) {
        if (event === "text") { ui.thinking.hidden = true; addWords(data.text); }
        else if (event === "done") done = data;
        else if (event === "error") say(data.message);
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") say("Oh no, the story got lost on the way. Is the server still running?");
  } finally {
    if (!done && !ui.card.hidden) done = { finish_reason: "cancelled", seconds: 0 };
    if (done) finishStory(done);
    ui.thinking.hidden = true;
    controller = null;
    setTelling(false);
  }
}

function stopStory() {
  if (controller) controller.abort(); // the server sees the client go and stops generating
}

function anotherOne() {
  if (ui.seed.value !== "") ui.seed.value = Number(ui.seed.value) + 1; // a fixed seed would tell the same story
  tellStory();
}

ui.tell.addEventListener("click", tellStory);
ui.stop.addEventListener("click", stopStory);
ui.again.addEventListener("click", anotherOne);
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) tellStory();
});

// ------------------------------------------------------------------ what the server tells us

async function loadInfo() {
  try {
    const info = await (await fetch("/api/info")).json();
    for (const example of info.examples) {
      const idea = document.createElement("button");
      idea.type = "button";
      idea.className = "idea";
      idea.textContent = example;
      idea.addEventListener("click", () => { ui.prompt.value = example; ui.prompt.focus(); });
      ui.ideas.append(idea);
    }
    ui.prompt.maxLength = info.limits.prompt_chars;
    ui.maxNewTokens.max = info.limits.max_new_tokens;
    $("num_beams").max = info.limits.num_beams;
    // the story defaults come from the server (tinytales.defaults), not from this page
    for (const id of ["temperature", "top_p", "top_k", "num_beams"]) {
      if (info.defaults[id] !== undefined) $(id).value = info.defaults[id];
    }
    for (const id of ["temperature", "top_p"]) $(`${id}-out`).textContent = $(id).value;
    ui.about.textContent = `Model: ${info.model} (reads ${info.context_length} tokens at a time).`;
    $("ingredients-hint").hidden = info.ingredients.trained;
    ui.safetyLine.textContent = info.safety
      ? "A word filter keeps them suitable for children."
      : "The children's word filter is off.";
  } catch (error) {
    ui.ideas.hidden = true;
  }
}

showMethodSettings();
loadInfo();
