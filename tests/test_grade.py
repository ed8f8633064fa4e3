"""`tinytales grade`: an LLM judge behind an OpenAI-compatible chat endpoint, here a small local stand-in."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from tinytales.cli import app
from tinytales.grade import Judge, grade_stories, parse_reply

runner = CliRunner()


def stand_in_grades(story: str) -> dict:
    """What the stand-in judge answers: grades that follow the story, so each story gets its own."""
    return {"grammar": 9 if story.rstrip().endswith(".") else 3, "creativity": min(10, len(set(story.split()))),
            "consistency": 7, "plot": 5, "age": "B", "comment": "a stand-in's comment"}


class StandInJudge(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        user = body["messages"][1]["content"]
        story = user.split("***", 1)[1]
        retried = len(body["messages"]) > 2
        if "GARBLE-ALWAYS" in story or ("GARBLE-ONCE" in story and not retried):
            content = "I think it is a lovely story, maybe a seven?"
        else:
            content = "Here you are:\n```json\n" + json.dumps(stand_in_grades(story)) + "\n```"
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    StandInJudge.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_each_story_gets_the_judges_grades_with_the_rubric_and_the_key(judge_url, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    stories = [("Once upon a time", " there was a cat. The cat was happy."), ("The dog", " ran and ran and")]
    report = grade_stories(stories, Judge(judge_url, "judge-1", key_env="JUDGE_KEY"))
    for grade, (prompt, story) in zip(report.grades, stories):
        expected = stand_in_grades(" " + story.strip())
        assert grade.graded and grade.prompt == prompt
        assert (grade.grammar, grade.creativity, grade.consistency, grade.plot) == (
            expected["grammar"], expected["creativity"], 7, 5)
        assert grade.age == "B: 4-5"  # the letter is read as its age group
    first = StandInJudge.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sekret"
    assert first["body"]["model"] == "judge-1"
    rubric = first["body"]["messages"][0]["content"]
    assert all(word in rubric for word in ("grammar", "creativity", "consistency", "plot", "age"))
    assert first["body"]["messages"][1]["content"] == "Once upon a time *** there was a cat. The cat was happy."
    row, = report.summary()
    assert row["graded"] == 2 and row["grammar"] == pytest.approx((9 + 3) / 2)


def test_an_unreadable_reply_is_asked_again_once_then_reported_never_guessed(judge_url):
    report = grade_stories([("A", " GARBLE-ONCE story."), ("B", " GARBLE-ALWAYS story.")], Judge(judge_url, "j"))
    once, always = report.grades
    assert once.graded and once.grammar == 9 and len(once.replies) == 2
    assert not always.graded and always.grammar is None and len(always.replies) == 2
    assert "did not parse" in always.error
    assert len(StandInJudge.seen) == 4  # two questions per story, no more
    row, = report.summary()
    assert (row["stories"], row["graded"]) == (2, 1)
    assert "not graded" in report.to_markdown()


@pytest.mark.parametrize("reply, problem", [
    ("no json here", "no JSON object"),
    ('{"grammar": 11, "creativity": 5, "consistency": 5, "plot": 5}', "grammar"),
    ('{"grammar": 5, "creativity": 5, "consistency": 5}', "plot"),
    ('{"grammar": 5.5, "creativity": 5, "consistency": 5, "plot": 5}', "grammar"),
    ('{"grammar": 5, "creativity": 5, "consistency": 5, "plot": 5', "no JSON object"),
])
def test_replies_without_four_whole_grades_from_1_to_10_do_not_parse(reply, problem):
    with pytest.raises(ValueError, match=problem):
        parse_reply(reply)


def test_cli_grades_a_compare_json_file_and_writes_markdown_and_json(judge_url, tmp_path):
    stories = tmp_path / "stories.json"
    stories.write_text(json.dumps({"outputs": [
        {"model": "m1", "method": "greedy", "prompt": "Once", "text": " upon a time. The end."},
        {"model": "m1", "method": "top-p", "prompt": "Once", "text": " a frog sang"}]}))
    out = tmp_path / "grades.json"
    result = runner.invoke(app, ["grade", "--stories", str(stories), "--judge-url", judge_url, "--judge-model", "j",
                                 "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [(r["method"], r["grammar"]) for r in data["summary"]] == [("greedy", 9), ("top-p", 3)]
    result = runner.invoke(app, ["grade", "--stories", str(stories), "--judge-url", judge_url, "--judge-model", "j"])
    assert result.exit_code == 0 and "greedy" in result.output and "9.0" in result.output and "3.0" in result.output


def test_cli_errors_name_the_fix(tmp_path):
    result = runner.invoke(app, ["grade", "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j",
                                 "--stories", str(tmp_path / "none.json")])
    assert result.exit_code == 1 and "compare --json" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"outputs": [{"prompt": "x", "text": "y"}]}))
    result = runner.invoke(app, ["grade", "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j",
                                 "--stories", str(bad)])
    assert result.exit_code == 1 and "cannot reach the judge" in result.output
    result = runner.invoke(app, ["grade", "--judge-url", "localhost:11434", "--judge-model", "j", "--stories", str(bad)])
    assert result.exit_code == 1 and "http://" in result.output
