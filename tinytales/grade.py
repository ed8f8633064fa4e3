"""Grading stories the way the TinyStories paper does: an LLM judge scores each completion.

The judge is any OpenAI-compatible chat endpoint (`POST {url}/chat/completions`: OpenAI, a local
ollama or llama.cpp server, vLLM ...). For every story it gets the beginning (the prompt) and the
model's continuation, separated by `***`, and answers with grammar, creativity, consistency with the
beginning and plot, 1-10 each, and its guess of the reader's age (the paper's rubric, asked as JSON).
A reply that does not parse is asked for once more; if it still does not parse, the story is reported
as ungraded with the judge's reply, never given a made-up grade.

    grades = grade_stories([("Once upon a time", " there was a cat ...")], Judge("http://localhost:11434/v1", "llama3"))
"""
from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field

CRITERIA = ("grammar", "creativity", "consistency", "plot")

INSTRUCTIONS = (
    "In the following exercise, the student is given a beginning of a story. The student needs to complete it "
    "into a full story. The exercise tests the student's language abilities and creativity. The symbol *** "
    "marks the separator between the prescribed beginning and the student's completion.\n\n"
    "Please grade the student's completion (the part after ***) in terms of grammar, creativity, consistency "
    "with the story's beginning (do the characters, places and events stay the same people, places and events?) "
    "and whether the plot makes sense, each from 1 (worst) to 10 (best). Also give your best guess of the age "
    "of the student, as one of: \"A: 3 or under\", \"B: 4-5\", \"C: 6-7\", \"D: 8-9\", \"E: 10-12\", "
    "\"F: 13-16\".\n\n"
    "Answer with one JSON object and nothing else, for example:\n"
    '{"grammar": 7, "creativity": 5, "consistency": 8, "plot": 6, "age": "C: 6-7", "comment": "one sentence"}'
)
RETRY = ("Your answer could not be read. Reply with only the JSON object: integer grades 1-10 for grammar, "
         "creativity, consistency and plot, the age group, and a one-sentence comment.")
AGES = ("A: 3 or under", "B: 4-5", "C: 6-7", "D: 8-9", "E: 10-12", "F: 13-16")


@dataclass
class Judge:
    """An OpenAI-compatible chat endpoint: base `url` (ending in /v1 for most servers), `model` name, and the
    environment variable that holds the API key (none needed for a local server)."""
    url: str
    model: str
    key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    temperature: float = 0.0

    def __post_init__(self):
        if not re.match(r"^https?://", self.url):
            raise ValueError(f"judge URL must start with http:// or https://, got {self.url!r} "
                             f"(e.g. --judge-url http://localhost:11434/v1 for ollama)")
        if not self.model:
            raise ValueError("name the judge's model with --judge-model (e.g. gpt-4o-mini, or llama3 on ollama)")

    def chat(self, messages: list[dict]) -> str:
        """The judge's reply to `messages`; a network or HTTP problem raises RuntimeError naming the fix."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url.rstrip("/") + "/chat/completions", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:300]
            hint = f" (is ${self.key_env} set?)" if e.code in (401, 403) else ""
            raise RuntimeError(f"the judge at {self.url} answered HTTP {e.code}{hint}: {detail}") from e
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise RuntimeError(f"cannot reach the judge at {self.url} ({getattr(e, 'reason', e)}); start the server "
                               f"or pass the right --judge-url") from e
        except json.JSONDecodeError as e:
            raise RuntimeError(f"the judge at {self.url} did not answer with JSON: {e}") from e
        try:
            return data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise RuntimeError(f"the judge at {self.url} answered without choices[0].message.content: "
                               f"{str(data)[:300]}") from e


@dataclass
class Grade:
    prompt: str
    story: str  # the continuation that was graded
    model: str | None = None
    method: str | None = None
    grammar: int | None = None
    creativity: int | None = None
    consistency: int | None = None
    plot: int | None = None
    age: str | None = None
    comment: str | None = None
    error: str | None = None  # why there is no grade (the judge's last reply did not parse)
    replies: list[str] = field(default_factory=list)

    @property
    def graded(self) -> bool:
        return self.error is None


def parse_reply(reply: str) -> dict:
    """The grades in a judge's reply (a JSON object, possibly inside a code fence or among words).

    Raises ValueError when there is no such object or a grade is missing or not an integer 1-10.
    """
    found = re.search(r"\{.*\}", reply, re.DOTALL)
    if not found:
        raise ValueError("no JSON object in the reply")
    try:
        data = json.loads(found.group())
    except json.JSONDecodeError as e:
        raise ValueError(f"the JSON object does not parse: {e.msg}") from e
    if not isinstance(data, dict):
        raise ValueError("the reply's JSON is not an object")
    grades = {}
    for name in CRITERIA:
        value = data.get(name)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
            raise ValueError(f"{name!r} is {value!r}, not an integer from 1 to 10")
        grades[name] = value
    age = data.get("age")
    if age is not None:
        age = str(age).strip()
        letter = age[:1].upper()
        age = next((a for a in AGES if a[0] == letter), age)
    grades["age"] = age
    grades["comment"] = None if data.get("comment") is None else str(data["comment"])
    return grades


def grade_story(prompt: str, story: str, judge: Judge, model: str | None = None, method: str | None = None) -> Grade:
    """One story graded: asked once, asked again once if the reply does not parse, else reported ungraded."""
    messages = [{"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": f"{prompt.strip()} *** {story.strip()}"}]
    grade = Grade(prompt=prompt, story=story, model=model, method=method)
    for attempt in range(2):
        reply = judge.chat(messages)
        grade.replies.append(reply)
        try:
            values = parse_reply(reply)
        except ValueError as e:
            grade.error = f"the judge's reply did not parse ({e})"
            messages = messages + [{"role": "assistant", "content": reply}, {"role": "user", "content": RETRY}]
            continue
        grade.error = None
        for key, value in values.items():
            setattr(grade, key, value)
        break
    return grade


@dataclass
class GradeReport:
    judge: dict
    grades: list[Grade]

    def summary(self) -> list[dict]:
        """Mean grades per (model, method), over the stories the judge graded."""
        rows = []
        keys = list(dict.fromkeys((g.model, g.method) for g in self.grades))
        for model, method in keys:
            mine = [g for g in self.grades if (g.model, g.method) == (model, method)]
            graded = [g for g in mine if g.graded]
            row = {"model": model, "method": method, "stories": len(mine), "graded": len(graded)}
            for name in CRITERIA:
                row[name] = sum(getattr(g, name) for g in graded) / len(graded) if graded else None
            row["mean"] = (sum(row[name] for name in CRITERIA) / len(CRITERIA)) if graded else None
            ages = [g.age for g in graded if g.age]
            row["age"] = max(set(ages), key=ages.count) if ages else None
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {"judge": self.judge, "summary": self.summary(),
                "grades": [{**asdict(g), "graded": g.graded} for g in self.grades]}

    def to_markdown(self) -> str:
        fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
        lines = [f"Judge: {self.judge['model']} at {self.judge['url']}", "",
                 "| model | method | graded | grammar | creativity | consistency | plot | mean | age (most often) |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in self.summary():
            lines.append(f"| {r['model'] or '–'} | {r['method'] or '–'} | {r['graded']}/{r['stories']} | "
                         f"{fmt(r['grammar'])} | {fmt(r['creativity'])} | {fmt(r['consistency'])} | {fmt(r['plot'])} | "
                         f"{fmt(r['mean'])} | {r['age'] or '–'} |")
        lines += ["", "| model | method | prompt | grammar | creativity | consistency | plot | age | comment |",
                  "|---|---|---|---:|---:|---:|---:|---|---|"]
        for g in self.grades:
            cells = ([str(getattr(g, name)) for name in CRITERIA] + [g.age or "–", (g.comment or "").replace("|", "/")]
                     if g.graded else ["–"] * 5 + [f"not graded: {g.error}"])
            lines.append(f"| {g.model or '–'} | {g.method or '–'} | {g.prompt.replace('|', '/')} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def grade_stories(stories, judge: Judge, progress: bool = False) -> GradeReport:
    """Grade (prompt, continuation) pairs or dicts with prompt, text and optionally model and method."""
    items = [s if isinstance(s, dict) else {"prompt": s[0], "text": s[1]} for s in stories]
    if not items:
        raise ValueError("no stories to grade")
    grades = []
    for i, item in enumerate(items):
        grades.append(grade_story(item["prompt"], item["text"], judge, item.get("model"), item.get("method")))
        if progress:
            print(f"graded {i + 1}/{len(items)}", flush=True)
    return GradeReport(judge={"url": judge.url, "model": judge.model}, grades=grades)


def stories_from_compare(path) -> list[dict]:
    """The stories of a `tinytales compare --json` file (its outputs: model, method, prompt, text)."""
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no such stories file: {path} (write one with tinytales compare --json > FILE)")
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg} at line {e.lineno}); pass the output of "
                         f"tinytales compare --json") from e
    outputs = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and {"prompt", "text"} <= set(o) for o in outputs):
        raise ValueError(f"{path} has no list of outputs with prompt and text; pass the output of "
                         f"tinytales compare --json")
    return [{"prompt": o["prompt"], "text": o["text"], "model": o.get("model"), "method": o.get("method")}
            for o in outputs]
