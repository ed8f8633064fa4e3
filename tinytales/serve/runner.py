"""Stories generated off the event loop, with a bounded waiting line.

A request reserves a place (`StoryRunner.submit`); when every running place is taken and the waiting
line is full it gets None and the app answers 503 with Retry-After, so memory never grows without
bound. Stories are told in one of two ways, and show their reader the same thing either way:

- continuous batching (the default, `tinytales.batching`): one scheduler thread decodes every running
  story together, one token per story per step; a story joins at the next step after it is admitted
  (first come, first served, up to `max_concurrent` rows of one KV cache, allocated once), leaves when
  it ends, and at once when it is cancelled, freeing its row for the next one;
- one story per worker thread (beam search, which keeps several rows per story; models the fast steps
  do not run; `batching=False`): the worker runs the engine's `stream_events` generator.

Text goes through a `TextGate` (the safety filter, stop sequences) to the request's asyncio queue. The
request cancels its job when the client goes away; the scheduler or the worker sees that before the
next token. The engine also asks the job (`should_stop`) before every beam search step.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import generate as engine
from ..batching import BatchedStory, StoryBatch
from ..defaults import SERVE_MAX_CONCURRENT, SERVE_MAX_QUEUE
from .safety import STORY_STOPPED, SafetyFilter

logger = logging.getLogger("tinytales.serve")


def last_word_end(text: str, start: int, limit: int) -> int:
    """The largest end in [start, limit] that does not cut a word (the character before it is not a letter).

    Used without a safety filter; with one, `SafetyFilter.unfinished_start` decides (it also knows
    about invisible characters, leetspeak, masks and spelled-out words)."""
    end = limit
    while end > start and (text[end - 1].isalnum() or text[end - 1] == "_"):
        end -= 1
    return end


class TextGate:
    """Decides how much generated text may be shown yet.

    Text is released only where nothing before it can still grow into a blocked word (a word
    being written, letters being spelled out, the start of a blocked phrase), so the safety filter
    sees every word whole before any of it reaches the reader, and never past the start of a
    stop sequence. `context` is the text the story continues (the prompt): a blocked word that
    starts there and ends in the story stops the story before any of it is shown. The filter
    works on folded text (see `safety`) kept up to date piece by piece, and only looks at a
    bounded window before what is not shown yet. After `finish_reason` is set ("stop" or
    "content_filter") the story is over.
    """

    def __init__(self, safety: SafetyFilter | None = None, stop: list[str] | tuple = (), context: str = ""):
        self.safety = safety
        self.stop = [s for s in stop if s]
        self.hold_back = max((len(s) for s in self.stop), default=1) - 1  # a stop sequence could be starting
        self.text = ""
        self.released = 0
        self.finish_reason: str | None = None
        self.context = context or ""
        # context + text, folded; positions there are offset by len(context)
        self._folded = safety.fold(self.context) if safety is not None else None

    def feed(self, piece: str) -> str:
        self.text += piece
        if self._folded is not None:
            self._folded.append(piece)
        return self._release(final=False)

    def flush(self) -> str:
        """Everything still held back, once the story has ended."""
        return self._release(final=True)

    @property
    def shown(self) -> str:
        return self.text[:self.released]

    def _release(self, final: bool) -> str:
        if self.finish_reason is not None:
            return ""
        text = self.text
        stops = [i for i in (text.find(s, self.released) for s in self.stop) if i != -1]
        if stops:
            end, self.finish_reason = min(stops), "stop"
        elif final:
            end = len(text)
        else:
            limit = max(len(text) - self.hold_back, self.released)
            end = last_word_end(text, self.released, limit) if self.safety is None else self._safe_end(limit)
        if self.safety is not None and end > self.released:
            folded, base = self._folded, len(self.context)
            # Nothing that is shown can still grow into a blocked word, so after the first check only
            # a blocked word's length before it needs a look; the first looks back into the context.
            back = self.safety.near if self.released else self.safety.margin
            start = max(0, folded.folded_index(base + self.released) - back)
            span = self.safety.search(folded.text, start, folded.folded_index(base + end))
            if span is not None:
                end = max(folded.origin[span[0]] - base, self.released)
                self.finish_reason = "content_filter"
        piece = text[self.released:end]
        self.released = end
        return piece

    def _safe_end(self, limit: int) -> int:
        """The largest end in [released, limit] before anything that may still become a blocked word."""
        folded, base = self._folded, len(self.context)
        f_limit = folded.folded_index(base + limit)
        cut = self.safety.unfinished_start(folded.text, f_limit)
        while cut < f_limit:  # a cut inside what one character folds to ("¼" -> "1⁄4") moves before it all
            whole = folded.folded_index(folded.origin[cut])
            if whole == cut:
                break
            cut = self.safety.unfinished_start(folded.text, whole)
        end = folded.original_index(cut) - base if cut < f_limit else limit
        return min(max(end, self.released), limit)


@dataclass(eq=False)  # compared and hashed by identity: jobs live in a set
class StoryJob:
    """One story being told; events go from the worker thread to the request's asyncio queue.

    Events are dicts: {"type": "text", "text"} pieces, then exactly one of {"type": "done",
    "finish_reason", ...counts...} or {"type": "error", "status", "message"}.
    """

    prompt: str
    config: engine.GenerationConfig
    stop: list[str] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.perf_counter)
    checked_at: float = field(default_factory=time.monotonic)  # when the request last checked its client

    def emit(self, event: dict) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()

    async def next_event(self, timeout: float | None = None) -> dict | None:
        """The next event, or None after `timeout` seconds without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None


@dataclass
class JobRecord:
    """What a finished job did, kept for /healthz and for tests (did a cancelled job stop early?)."""

    finish_reason: str
    pieces: int  # text pieces the engine produced
    new_tokens: int
    seconds: float


class StoryOutput:
    """What one story shows its reader, whichever way it is told: text pieces through its TextGate to the job,
    then the one done event with the counts."""

    def __init__(self, runner: "StoryRunner", job: StoryJob):
        self.job = job
        self.gate = TextGate(runner.safety, job.stop, context=job.prompt)
        self.started = time.perf_counter()
        self.pieces = 0

    def piece(self, text: str) -> bool:
        """Show what may be shown of a new piece; True when the story must stop (a stop sequence, a word)."""
        self.pieces += 1
        shown = self.gate.feed(text)
        if shown:
            self.job.emit({"type": "text", "text": shown})
        return self.gate.finish_reason is not None

    def finish(self, reason: str | None, finished: bool, prompt_tokens: int, new_tokens: int,
               truncated: bool) -> JobRecord:
        """The done event: `reason` None means the engine ran out (finished: with the end-of-story token)."""
        if reason is None:
            rest = self.gate.flush()
            if rest:
                self.job.emit({"type": "text", "text": rest})
            reason = self.gate.finish_reason or ("stop" if finished else "length")
        elif reason != "cancelled":
            reason = self.gate.finish_reason or reason
        seconds = time.perf_counter() - self.started
        done = {
            "type": "done",
            "finish_reason": reason,
            "text": self.gate.shown,
            "prompt_tokens": prompt_tokens,
            "prompt_truncated": truncated,
            "new_tokens": new_tokens,
            "seconds": round(seconds, 4),
            "queue_seconds": round(self.started - self.job.submitted_at, 4),
            "tokens_per_second": round(new_tokens / seconds, 2) if seconds > 0 else 0.0,
        }
        if reason == "content_filter":
            done["message"] = STORY_STOPPED
        self.job.emit(done)
        return JobRecord(reason, self.pieces, new_tokens, seconds)


@dataclass(eq=False)
class _Batched:
    """A job being told in the batch: its row there, its output, its text decoder, its prompt's counts."""

    job: StoryJob
    story: BatchedStory
    output: StoryOutput
    decoder: engine.IncrementalDecoder
    prompt_tokens: int
    truncated: bool


class StoryRunner:
    def __init__(self, loaded, safety: SafetyFilter | None, max_concurrent: int = SERVE_MAX_CONCURRENT,
                 max_queue: int = SERVE_MAX_QUEUE,
                 batching: bool = True):
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError(f"max_concurrent must be >= 1 and max_queue >= 0, got {max_concurrent} and {max_queue}")
        self.loaded = loaded
        self.safety = safety
        self.max_concurrent = max_concurrent
        self.capacity = max_concurrent + max_queue
        self.batching = batching and StoryBatch.supports(loaded.model)
        self._executor = ThreadPoolExecutor(max_concurrent, thread_name_prefix="tinytales-story")
        self._lock = threading.Condition()
        self._jobs: set[StoryJob] = set()
        self._line: deque[StoryJob] = deque()  # jobs waiting for a row of the batch, first come first served
        self._closed = False
        self.running = 0
        self.history: deque[JobRecord] = deque(maxlen=200)
        self.served = 0
        if self.batching:
            self._scheduler = threading.Thread(target=self._schedule, name="tinytales-batch", daemon=True)
            self._scheduler.start()

    @property
    def waiting(self) -> int:
        return len(self._jobs) - self.running

    def submit(self, prompt: str, config, stop: list[str] | None = None) -> StoryJob | None:
        """Start a job (or queue it); None when every place is taken."""
        job = StoryJob(prompt, config, list(stop or []), loop=asyncio.get_running_loop())
        batched = self.batching and config.method != "beam"
        with self._lock:
            if len(self._jobs) >= self.capacity or self._closed:
                return None
            self._jobs.add(job)
            if batched:
                self._line.append(job)
                self._lock.notify()
        if not batched:
            self._executor.submit(self._work, job)
        return job

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            for job in self._jobs:
                job.cancel()
            self._lock.notify()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _started(self) -> None:
        with self._lock:
            self.running += 1

    def _ended(self, job: StoryJob, record: JobRecord, running: bool = True) -> None:
        with self._lock:
            self.running -= running
            self._jobs.discard(job)
            self.served += 1
        self.history.append(record)
        job.finished.set()

    def _failed(self, job: StoryJob, error: Exception) -> None:
        if isinstance(error, ValueError):  # the engine's check of prompt and settings
            job.emit({"type": "error", "status": 400, "message": str(error)})
        else:  # a bug: log it, tell the client, keep serving
            logger.error("story generation failed", exc_info=error)
            job.emit({"type": "error", "status": 500, "message": f"the storyteller failed ({type(error).__name__})"})

    # ------------------------------------------------------------------ the batch, in the scheduler thread

    def _schedule(self) -> None:
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        batch = StoryBatch(model, tokenizer, rows=self.max_concurrent)
        telling: dict[BatchedStory, _Batched] = {}
        while True:
            with self._lock:
                while not self._closed and not self._line and not telling:
                    self._lock.wait()
                if self._closed:
                    break
                gone = [job for job in self._line if job.cancelled.is_set()]  # their places go to others now
                for job in gone:
                    self._line.remove(job)
                admitted = gone + [self._line.popleft() for _ in range(min(len(batch.free), len(self._line)))]
            for job in admitted:
                self._admit(batch, job, telling)
            for told in [t for t in telling.values() if t.job.cancelled.is_set()]:
                self._leave(batch, telling, told, "cancelled")
            if not telling:
                continue
            try:
                stepped = batch.step()
            except Exception as e:  # a bug: every story of the batch fails, the server keeps serving
                for told in list(telling.values()):
                    self._failed(told.job, e)
                    self._leave(batch, telling, told, None, record=JobRecord("error", told.output.pieces, 0, 0.0))
                batch = StoryBatch(model, tokenizer, rows=self.max_concurrent)
                continue
            for story, token in stepped:
                told = telling[story]
                stop = False
                if not story.finished:
                    piece = told.decoder.push(token)
                    stop = bool(piece) and told.output.piece(piece)
                if stop:
                    self._leave(batch, telling, told, "stop")
                elif story.done:
                    rest = told.decoder.flush()
                    if rest and told.output.piece(rest):
                        self._leave(batch, telling, told, "stop")
                    else:
                        self._leave(batch, telling, told, None)
        for told in list(telling.values()):
            self._leave(batch, telling, told, "cancelled")

    def _admit(self, batch: StoryBatch, job: StoryJob, telling: dict) -> None:
        if job.cancelled.is_set():  # gone while waiting in line
            job.emit({"type": "done", "finish_reason": "cancelled"})
            self._ended(job, JobRecord("cancelled", 0, 0, 0.0), running=False)
            return
        self._started()
        output = StoryOutput(self, job)
        try:
            prompt_ids, truncated = engine.encode_prompt(
                self.loaded.tokenizer, job.prompt, self.loaded.model.config.context_length,
                job.config.max_new_tokens, job.config.ingredients)
            story = batch.add(prompt_ids, job.config)
        except Exception as e:
            self._failed(job, e)
            self._ended(job, JobRecord("error", 0, 0, 0.0))
            return
        telling[story] = _Batched(job, story, output, engine.IncrementalDecoder(self.loaded.tokenizer),
                                  len(prompt_ids), truncated)

    def _leave(self, batch: StoryBatch, telling: dict, told: _Batched, reason: str | None,
               record: JobRecord | None = None) -> None:
        batch.remove(told.story)
        del telling[told.story]
        if record is None:
            story = told.story
            record = told.output.finish(reason, story.finished, told.prompt_tokens, story.new_tokens, told.truncated)
        self._ended(told.job, record)

    # ------------------------------------------------------------------ one story per worker thread

    def _work(self, job: StoryJob) -> None:
        self._started()
        record = JobRecord("error", 0, 0, 0.0)
        try:
            if job.cancelled.is_set():  # gone while waiting in line
                record.finish_reason = "cancelled"
                job.emit({"type": "done", "finish_reason": "cancelled"})
                return
            record = self._tell(job)
        except Exception as e:
            self._failed(job, e)
        finally:
            self._ended(job, record)

    def _tell(self, job: StoryJob) -> JobRecord:
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        output = StoryOutput(self, job)
        events = engine.stream_events(model, tokenizer, job.prompt, job.config, should_stop=job.cancelled.is_set)
        summary, reason = None, None
        try:
            for event in events:
                if job.cancelled.is_set():
                    reason = "cancelled"
                    break
                if not isinstance(event, str):
                    summary = event
                    continue
                if output.piece(event):  # a stop sequence or an unsuitable word: stop generating now
                    reason = "stop"
                    break
        finally:
            events.close()
        if reason is None and summary is None and job.cancelled.is_set():  # the engine stopped (should_stop)
            reason = "cancelled"
        if summary is not None:
            return output.finish(reason, summary.finished, summary.prompt_tokens, summary.new_tokens,
                                 summary.truncated)
        # stopped early: count what was generated (encode_prompt would warn about truncation again)
        full = len(engine.story_head(tokenizer, job.config.ingredients)) + len(tokenizer.encode(job.prompt))
        limit = engine.prompt_token_limit(model.config.context_length, job.config.max_new_tokens)
        new_tokens = len(tokenizer.encode(output.gate.text)) if output.gate.text else 0
        return output.finish(reason, False, min(full, limit), new_tokens, full > limit)
