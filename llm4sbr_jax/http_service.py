"""The HTTP front of a `serving.Recommender`: standard-library server threads and one batching worker.

Endpoints (JSON in and out; see docs/serving.md)::

    POST /recommend   {"sessions": [["B0000535UX", "Some item name", ...], ...], "k": 20, "explain": false}
                   -> {"model": ..., "recommendations": [{"session": [...], "items": [{"rank", "item_id", "name",
                       "score"}, ...], "intents": [...] (explain only)}, ...]}
    GET  /healthz  -> {"status": "ok", model, epoch, buckets, "compiles": scorer traces so far, "served": ...}

A bad request gets a 4xx with {"error": message, "field": where} and never reaches the model: malformed JSON or a
body that is not an object (400), an unknown field, a wrong type, no session, an empty or too long session, an
unknown item id or name (with close matches), K out of range (400), a missing or oversized body (411 / 413), an
unknown path (404) or method (405). Only a failure inside the model answers 500, and the worker goes on.

Why the standard library (`http.server.ThreadingHTTPServer`): the model call is the only heavy work and it runs on
one worker thread anyway (JAX releases the GIL while XLA runs), requests are small JSON, and the service listens on
loopback by default; an ASGI/WSGI stack (none is installed here) would add dependencies and an event loop without
making the batched call faster. HTTP/1.1 keep-alive is on, so a client reuses its connection.

Batching: handler threads parse and validate a request (resolving names happens there, in parallel with the model)
and queue it; the worker takes every queued request up to `max_batch` sessions, waits up to `max_wait_ms` after the
oldest one's arrival for more *only while other requests are being received* (so a lone client never waits), runs
one `Recommender.score` call (its scorer pads to a compiled bucket) and hands each request the batch; the handler
formats its own rows (`Recommender.rows`) while the worker runs the next batch.
"""

from __future__ import annotations

import collections
import dataclasses
import http.server
import json
import logging
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from llm4sbr_jax import serving

log = logging.getLogger(__name__)

FIELDS = ("sessions", "k", "explain")
DEFAULT_K = 20


class HTTPError(Exception):
  """An error answer: status code, message, and the request field it concerns (if any)."""

  def __init__(self, status: int, message: str, field: Optional[str] = None):
    super().__init__(message)
    self.status, self.message, self.field = status, message, field


def parse_request(body: bytes, rec: serving.Recommender, max_sessions: int) -> tuple[list[np.ndarray], int, bool]:
  """(resolved sessions, k, explain) of a /recommend body; HTTPError 400 naming the field otherwise."""
  try:
    payload = json.loads(body)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise HTTPError(400, f"the body is not valid JSON ({e})") from e
  except RecursionError as e:
    raise HTTPError(400, "the body is nested too deeply") from e
  if not isinstance(payload, dict):
    raise HTTPError(400, f"expected a JSON object {{\"sessions\": [[...], ...], \"k\": {DEFAULT_K}}}, got "
                    f"{type(payload).__name__}")
  unknown = sorted(set(payload) - set(FIELDS))
  if unknown:
    raise HTTPError(400, f"unknown field(s) {unknown}; expected {list(FIELDS)}", unknown[0])
  if "sessions" not in payload:
    raise HTTPError(400, "missing field: a list of sessions, each a list of item ids or names", "sessions")
  try:
    k = rec.check_k(payload.get("k", DEFAULT_K))
    explain = rec.check_explain(payload.get("explain", False))
    if isinstance(payload["sessions"], list) and len(payload["sessions"]) > max_sessions:
      raise serving.ServingError(f"{len(payload['sessions'])} sessions; at most {max_sessions} per request",
                                 "sessions")
    sessions = rec.resolve(payload["sessions"])
  except serving.ServingError as e:
    raise HTTPError(400, str(e), e.field) from e
  return sessions, k, explain


@dataclasses.dataclass
class Job:
  """One queued request."""

  sessions: list[np.ndarray]
  k: int
  explain: bool
  arrival: float = dataclasses.field(default_factory=time.monotonic)
  done: threading.Event = dataclasses.field(default_factory=threading.Event)
  result: Optional[tuple[serving.Scored, int]] = None  # the batch and where this job's sessions start in it
  error: Optional[str] = None


class Batcher:
  """A worker thread answering queued jobs in batches of up to `max_batch` sessions."""

  def __init__(self, fn: Callable[[list[np.ndarray], bool], serving.Scored], max_batch: int, max_wait_ms: float,
               max_queue: int = 1024):
    self.fn, self.max_batch, self.max_wait, self.max_queue = fn, max_batch, max_wait_ms / 1000.0, max_queue
    self._cond = threading.Condition()
    self._queue: collections.deque[Job] = collections.deque()
    self._incoming = 0
    self._stopped = False
    self.batches = collections.Counter()  # sessions per model call -> calls
    self.requests = collections.Counter()  # requests per model call -> calls
    self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
    self._thread.start()

  def receiving(self, delta: int) -> None:
    """A handler started (+1) or finished (-1) reading a request: the worker may wait for it."""
    with self._cond:
      self._incoming += delta
      self._cond.notify_all()

  def submit(self, job: Job) -> None:
    with self._cond:
      if len(self._queue) >= self.max_queue:
        raise HTTPError(503, f"overloaded: {len(self._queue)} requests queued; retry later")
      self._queue.append(job)
      self._cond.notify_all()

  def stop(self) -> None:
    with self._cond:
      self._stopped = True
      self._cond.notify_all()
    self._thread.join(timeout=10)

  def _take(self) -> list[Job]:
    with self._cond:
      while not self._queue and not self._stopped:
        self._cond.wait()
      if self._stopped:
        return []
      deadline = self._queue[0].arrival + self.max_wait
      while (sum(len(j.sessions) for j in self._queue) < self.max_batch and self._incoming > 0
             and time.monotonic() < deadline):
        self._cond.wait(max(deadline - time.monotonic(), 0.0))
      jobs, size = [], 0
      while self._queue and size + len(self._queue[0].sessions) <= self.max_batch:
        size += len(self._queue[0].sessions)
        jobs.append(self._queue.popleft())
      return jobs

  def _loop(self) -> None:
    while True:
      jobs = self._take()
      if not jobs:
        return
      sessions = [s for j in jobs for s in j.sessions]
      self.batches[len(sessions)] += 1
      self.requests[len(jobs)] += 1
      try:
        scored = self.fn(sessions, any(j.explain for j in jobs))
      except Exception as e:  # pylint: disable=broad-except
        log.exception("model call failed")
        for j in jobs:
          j.error = f"internal error: {type(e).__name__}: {e}"
          j.done.set()
        continue
      start = 0
      for j in jobs:  # each handler formats its own rows, while this thread runs the next batch
        j.result = (scored, start)
        start += len(j.sessions)
        j.done.set()


class Service:
  """A `Recommender` behind `ThreadingHTTPServer` + `Batcher`; `serve_forever()` / `close()`."""

  def __init__(self, rec: serving.Recommender, host: str = "127.0.0.1", port: int = 8080,
               max_batch: Optional[int] = None, max_wait_ms: float = 2.0, max_queue: int = 1024,
               max_body_bytes: int = 1 << 20, timeout_s: float = 60.0):
    """Binds the socket and starts the worker (the scorer is already compiled).

    Args:
      rec: the recommender.
      host, port: where to listen (port 0: any free port, see `port`).
      max_batch: sessions per model call and per request (default: the largest bucket).
      max_wait_ms: how long the worker may hold the oldest queued request for others being received.
      max_queue: queued requests beyond which new ones get 503.
      max_body_bytes: larger bodies get 413.
      timeout_s: a request not answered in this time gets 503.
    """
    self.rec = rec
    self.max_batch = max_batch or rec.scorer.buckets[-1]
    self.max_body, self.timeout = max_body_bytes, timeout_s
    self.served = collections.Counter()  # status code -> responses
    self.batcher = Batcher(rec.score, self.max_batch, max_wait_ms, max_queue)
    service = self

    class Handler(_Handler):
      owner = service

    self.server = _Server((host, port), Handler)

  @property
  def address(self) -> tuple[str, int]:
    return self.server.server_address[:2]

  @property
  def url(self) -> str:
    host, port = self.address
    return f"http://{host}:{port}"

  def health(self) -> dict[str, Any]:
    return {"status": "ok", **self.rec.info(), "compiles": sum(self.rec.scorer.traces.values()),
            "max_batch": self.max_batch, "served": {str(k): v for k, v in sorted(self.served.items())},
            "batch_sizes": {str(k): v for k, v in sorted(self.batcher.batches.items())},
            "requests_per_call": {str(k): v for k, v in sorted(self.batcher.requests.items())}}

  def submit(self, body: bytes) -> Job:
    """Parses a /recommend body (HTTPError 400 when bad) and queues it."""
    job = Job(*parse_request(body, self.rec, self.max_batch))
    self.batcher.submit(job)
    return job

  def answer(self, job: Job) -> dict[str, Any]:
    """Waits for a queued job's rows."""
    if not job.done.wait(self.timeout):
      raise HTTPError(503, f"not answered within {self.timeout:g} s; retry later")
    if job.error is not None:
      raise HTTPError(500, job.error)
    scored, start = job.result
    rows = self.rec.rows(scored, start, start + len(job.sessions), job.k, job.explain)
    return {"model": self.rec.run.label, "k": job.k, "recommendations": rows}

  def serve_forever(self) -> None:
    self.server.serve_forever(poll_interval=0.2)

  def start(self) -> threading.Thread:
    """Serves on a background thread (tests, load tests); returns it."""
    thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
    thread.start()
    return thread

  def close(self) -> None:
    self.server.shutdown()
    self.server.server_close()
    self.batcher.stop()


class _Server(http.server.ThreadingHTTPServer):
  """One thread per connection; a listen backlog for many clients connecting at once (the default 5 makes the
  surplus connects retry after a second or more)."""

  daemon_threads = True
  request_queue_size = 1024


class _Handler(http.server.BaseHTTPRequestHandler):
  """Routes /recommend and /healthz; every answer is JSON with a Content-Length (keep-alive)."""

  protocol_version = "HTTP/1.1"
  disable_nagle_algorithm = True  # headers and body go out as two writes: without this, +40 ms (delayed ACK)
  server_version = "llm4sbr-jax"
  timeout = 120  # an idle keep-alive connection is closed after this many seconds
  owner: Service
  routes = {"/recommend": "POST", "/healthz": "GET"}

  def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
    log.debug("%s " + format, self.address_string(), *args)

  def _send(self, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    self.owner.served[status] += 1
    self.send_response(status)
    self.send_header("Content-Type", "application/json; charset=utf-8")
    self.send_header("Content-Length", str(len(body)))
    if self.close_connection:
      self.send_header("Connection", "close")
    self.end_headers()
    self.wfile.write(body)

  def _error(self, e: HTTPError) -> None:
    payload = {"error": e.message}
    if e.field:
      payload["field"] = e.field
    self._send(e.status, payload)

  def _route(self, method: str) -> None:
    path = self.path.split("?", 1)[0]
    if path not in self.routes:
      raise HTTPError(404, f"no such path {path!r}; endpoints: POST /recommend, GET /healthz")
    if self.routes[path] != method:
      raise HTTPError(405, f"{path} takes {self.routes[path]}, not {method}")

  def _body(self) -> bytes:
    length = self.headers.get("Content-Length")
    if length is None:
      self.close_connection = True
      raise HTTPError(411, "a Content-Length header is required")
    try:
      n = int(length)
    except ValueError:
      self.close_connection = True
      raise HTTPError(400, f"Content-Length {length!r} is not an integer") from None
    if n < 0 or n > self.owner.max_body:
      self.close_connection = True  # the body stays unread
      raise HTTPError(413, f"body of {n} bytes; at most {self.owner.max_body}")
    return self.rfile.read(n)

  def _refuse(self) -> None:
    """Any other method: 405 (the base class would answer 501)."""
    self._error(HTTPError(405, f"{self.command} is not supported; endpoints: POST /recommend, GET /healthz"))

  do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

  def do_HEAD(self) -> None:  # pylint: disable=invalid-name
    self.owner.served[405] += 1
    self.send_response(405)
    self.send_header("Content-Length", "0")
    self.end_headers()

  def do_GET(self) -> None:  # pylint: disable=invalid-name
    try:
      self._route("GET")
      self._send(200, self.owner.health())
    except HTTPError as e:
      self._error(e)

  def do_POST(self) -> None:  # pylint: disable=invalid-name
    batcher = self.owner.batcher
    try:
      batcher.receiving(+1)
      try:
        self._route("POST")
        job = self.owner.submit(self._body())
      finally:
        batcher.receiving(-1)  # queued (or refused): the worker no longer waits for it
      self._send(200, self.owner.answer(job))
    except HTTPError as e:
      self._error(e)
    except Exception as e:  # pylint: disable=broad-except
      log.exception("request failed")
      self._error(HTTPError(500, f"internal error: {type(e).__name__}: {e}"))


def run_forever(service: Service, announce: Callable[[str], None] = print) -> None:
  """Serves until interrupted (Ctrl-C / SIGTERM via KeyboardInterrupt), then closes the socket and the worker."""
  announce(f"listening on {service.url} (POST /recommend, GET /healthz)")
  try:
    service.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    service.close()

