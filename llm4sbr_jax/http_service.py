"""The HTTP front of a `serving.Recommender`: one asyncio event loop for every connection, one model thread.

Endpoints (JSON in and out; see docs/serving.md)::

    POST /recommend   {"sessions": [["B0000535UX", "Some item name", ...], ...], "k": 20, "explain": false}
                   -> {"model": ..., "recommendations": [{"session": [...], "items": [{"rank", "item_id", "name",
                       "score"}, ...], "intents": [...] (explain only)}, ...]}
    GET  /healthz  -> {"status": "ok", model, epoch, buckets, "compiles": scorer traces so far, "served": ...}

A bad request gets a 4xx with {"error": message, "field": where} and never reaches the model: malformed JSON or a
body that is not an object (400), an unknown field, a wrong type, no session, an empty or too long session, an
unknown item id or name (with close matches), K out of range (400), a missing or oversized body (411 / 413), an
unknown path (404) or method (405), a malformed request line or header (400, connection closed), headers over 64 KiB
(431). Only a failure inside the model answers 500, and the service goes on.

Why asyncio from the standard library: the model call is the only heavy work and runs on one thread whatever the
front end (XLA releases the GIL); everything else is a little Python per request (read the bytes, parse the JSON,
resolve the ids, format the answer). A thread per connection (`http.server`, the first version) spent 0.7-0.9 ms of
server CPU per request at 64 clients (its header parser, 64 threads taking turns at the GIL), this loop 0.35-0.7 ms
(docs/serving.md); one event loop does the same work in one thread with no switching,
and HTTP/1.1 here is the small subset a JSON API needs (a request line, headers, a Content-Length body, keep-alive,
pipelining in order). No ASGI/WSGI server is installed here, and none would make the batched call faster.

Batching: the loop parses and validates a request (resolving names too) and queues it; the batcher task takes every
queued request up to `max_batch` sessions, waits up to `max_wait_ms` after the oldest one's arrival for more *only
while other requests are partly received* (so a lone client never waits), and runs one `Recommender.score` call on
the model thread (its scorer pads to a compiled bucket); requests that arrive meanwhile form the next batch. Each
request's rows are formatted on the loop while the model thread runs the next batch.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import email.utils
import json
import logging
import socket
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from llm4sbr_jax import serving

log = logging.getLogger(__name__)

FIELDS = ("sessions", "k", "explain")
DEFAULT_K = 20
MAX_HEADER_BYTES = 1 << 16
IDLE_TIMEOUT_S = 120.0  # an idle keep-alive connection is closed after this long
ROUTES = {"/recommend": "POST", "/healthz": "GET"}
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
           413: "Payload Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


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
  """One queued request; `answer` gets (the scored batch, where this job's sessions start in it)."""

  sessions: list[np.ndarray]
  k: int
  explain: bool
  answer: asyncio.Future
  arrival: float = dataclasses.field(default_factory=time.monotonic)


class Batcher:
  """Answers queued jobs in batches of up to `max_batch` sessions, one model call at a time on its own thread.

  Lives on the service's event loop: `submit` and `receiving` are called there, `run` is a task there.
  """

  def __init__(self, fn: Callable[[list[np.ndarray], bool], serving.Scored], max_batch: int, max_wait_ms: float,
               max_queue: int = 1024):
    self.fn, self.max_batch, self.max_wait, self.max_queue = fn, max_batch, max_wait_ms / 1000.0, max_queue
    self._queue: collections.deque[Job] = collections.deque()
    self._incoming = 0
    self._changed = asyncio.Event()
    self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
    self.batches = collections.Counter()  # sessions per model call -> calls
    self.requests = collections.Counter()  # requests per model call -> calls

  def receiving(self, delta: int) -> None:
    """A connection started (+1) or finished (-1) receiving a request: the batcher may wait for it."""
    self._incoming += delta
    self._changed.set()

  def submit(self, job: Job) -> None:
    if len(self._queue) >= self.max_queue:
      raise HTTPError(503, f"overloaded: {len(self._queue)} requests queued; retry later")
    self._queue.append(job)
    self._changed.set()

  async def _take(self) -> list[Job]:
    while not self._queue:
      self._changed.clear()
      await self._changed.wait()
    deadline = self._queue[0].arrival + self.max_wait
    while sum(len(j.sessions) for j in self._queue) < self.max_batch and self._incoming > 0:
      left = deadline - time.monotonic()
      if left <= 0:
        break
      self._changed.clear()
      try:
        await asyncio.wait_for(self._changed.wait(), left)
      except TimeoutError:
        break
    jobs, size = [], 0
    while self._queue and size + len(self._queue[0].sessions) <= self.max_batch:
      size += len(self._queue[0].sessions)
      jobs.append(self._queue.popleft())
    return jobs

  async def run(self) -> None:
    """The batching task: forever take jobs, score them on the model thread, hand each its part."""
    loop = asyncio.get_running_loop()
    while True:
      jobs = await self._take()
      sessions = [s for j in jobs for s in j.sessions]
      self.batches[len(sessions)] += 1
      self.requests[len(jobs)] += 1
      try:
        scored = await loop.run_in_executor(self.pool, self.fn, sessions, any(j.explain for j in jobs))
      except Exception as e:  # pylint: disable=broad-except
        log.exception("model call failed")
        error = HTTPError(500, f"internal error: {type(e).__name__}: {e}")
        for j in jobs:
          if not j.answer.done():  # not given up on (timeout, closed connection)
            j.answer.set_exception(error)
        continue
      start = 0
      for j in jobs:
        if not j.answer.done():
          j.answer.set_result((scored, start))
        start += len(j.sessions)


class Service:
  """A `Recommender` behind an asyncio HTTP/1.1 server + `Batcher`; `serve_forever()` or `start()`, then `close()`."""

  def __init__(self, rec: serving.Recommender, host: str = "127.0.0.1", port: int = 8080,
               max_batch: Optional[int] = None, max_wait_ms: float = 2.0, max_queue: int = 1024,
               max_body_bytes: int = 1 << 20, timeout_s: float = 60.0):
    """Binds the socket (OSError when the address is taken or not local); the scorer is already compiled.

    Args:
      rec: the recommender.
      host, port: where to listen (port 0: any free port, see `address`).
      max_batch: sessions per model call and per request (default: the largest bucket).
      max_wait_ms: how long the batcher may hold the oldest queued request for others being received.
      max_queue: queued requests beyond which new ones get 503.
      max_body_bytes: larger bodies get 413.
      timeout_s: a request not answered in this time gets 503.
    """
    self.rec = rec
    self.max_batch = max_batch or rec.scorer.buckets[-1]
    self.max_body, self.timeout = max_body_bytes, timeout_s
    self.served = collections.Counter()  # status code -> responses
    self.batcher = Batcher(rec.score, self.max_batch, max_wait_ms, max_queue)
    self.sock = socket.create_server((host, port), backlog=1024)  # many clients may connect at once
    self.loop = asyncio.new_event_loop()
    self._stop: Optional[asyncio.Event] = None
    self._thread: Optional[threading.Thread] = None
    self._header = {status: f"HTTP/1.1 {status} {reason}\r\nServer: llm4sbr-jax\r\n"
                    "Content-Type: application/json; charset=utf-8\r\n".encode() for status, reason in REASONS.items()}
    self._date = (0, b"")  # (second, its Date header line), made once a second

  @property
  def address(self) -> tuple[str, int]:
    return self.sock.getsockname()[:2]

  @property
  def url(self) -> str:
    host, port = self.address
    return f"http://{host}:{port}"

  def health(self) -> dict[str, Any]:
    return {"status": "ok", **self.rec.info(), "compiles": sum(self.rec.scorer.traces.values()),
            "max_batch": self.max_batch, "served": {str(k): v for k, v in sorted(self.served.items())},
            "batch_sizes": {str(k): v for k, v in sorted(self.batcher.batches.items())},
            "requests_per_call": {str(k): v for k, v in sorted(self.batcher.requests.items())}}

  def response(self, status: int, payload: dict[str, Any], close: bool = False) -> bytes:
    """The bytes of a JSON answer (counted in `served`)."""
    self.served[status] += 1
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    now = int(time.time())
    if now != self._date[0]:
      self._date = (now, f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n".encode())
    return b"".join((self._header[status], self._date[1], b"Connection: close\r\n" if close else b"",
                     b"Content-Length: %d\r\n\r\n" % len(body), body))

  def error(self, e: HTTPError, close: bool = False) -> bytes:
    payload = {"error": e.message}
    if e.field:
      payload["field"] = e.field
    return self.response(e.status, payload, close)

  async def recommend(self, body: bytes) -> dict[str, Any]:
    """Parses a /recommend body (HTTPError 400 when bad), queues it and waits for its rows."""
    sessions, k, explain = parse_request(body, self.rec, self.max_batch)
    job = Job(sessions, k, explain, self.loop.create_future())
    self.batcher.submit(job)
    expiry = self.loop.call_later(self.timeout, _expire, job.answer,
                                  HTTPError(503, f"not answered within {self.timeout:g} s; retry later"))
    try:
      scored, start = await job.answer
    finally:
      expiry.cancel()
    rows = self.rec.rows(scored, start, start + len(sessions), k, explain)
    return {"model": self.rec.run.label, "k": k, "recommendations": rows}

  async def _serve(self) -> None:
    self._stop = asyncio.Event()
    server = await self.loop.create_server(lambda: _Connection(self), sock=self.sock)
    batcher = self.loop.create_task(self.batcher.run())
    try:
      await self._stop.wait()
    finally:
      server.close()
      batcher.cancel()

  def serve_forever(self) -> None:
    """Serves on this thread until `close()` (from another thread) or KeyboardInterrupt; then closes everything."""
    asyncio.set_event_loop(self.loop)
    try:
      self.loop.run_until_complete(self._serve())
    finally:
      tasks = asyncio.all_tasks(self.loop)  # connections' request handlers
      for task in tasks:
        task.cancel()
      self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
      self._release(wait=True)  # a model call in flight ends

  def start(self) -> threading.Thread:
    """Serves on a background thread (tests, load tests); returns it."""
    self._thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
    self._thread.start()
    return self._thread

  def close(self) -> None:
    """Stops a service started with `start()` (and frees a service never started); idempotent."""
    if self._thread is not None:
      while self._thread.is_alive() and self._stop is None:  # still starting up
        time.sleep(0.01)
      if self._thread.is_alive():
        self.loop.call_soon_threadsafe(self._stop.set)
      self._thread.join(timeout=30)
    elif not self.loop.is_closed() and not self.loop.is_running():
      self._release(wait=False)

  def _release(self, wait: bool) -> None:
    """Frees the model thread, the socket and the loop."""
    self.batcher.pool.shutdown(wait=wait)
    self.sock.close()
    self.loop.close()


def _expire(answer: asyncio.Future, error: HTTPError) -> None:
  if not answer.done():
    answer.set_exception(error)


class _Connection(asyncio.Protocol):
  """One client connection: reads requests in order (keep-alive, pipelining) and writes each answer."""

  def __init__(self, service: Service):
    self.service = service
    self.transport: Optional[asyncio.Transport] = None
    self.buffer = b""
    self._head: Optional[tuple[int, str, str, int, bool]] = None  # the buffered request's parsed head, body pending
    self.partial = False  # part of a request received: the batcher may wait for the rest
    self.busy = False  # a /recommend answer is pending; later requests stay buffered
    self.eof = False
    self.idle: Optional[asyncio.TimerHandle] = None

  def connection_made(self, transport: asyncio.BaseTransport) -> None:
    self.transport = transport
    self._arm_idle()

  def connection_lost(self, exc: Optional[Exception]) -> None:
    self._set_partial(False)
    if self.idle is not None:
      self.idle.cancel()
    self.transport = None

  def data_received(self, data: bytes) -> None:
    self.buffer += data
    self._process()

  def eof_received(self) -> bool:
    """The client is done sending: answer what it sent, then close."""
    self.eof = True
    self._process()
    return True  # keep the transport open for the answers

  def _arm_idle(self) -> None:
    if self.idle is not None:
      self.idle.cancel()
    self.idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT_S, self._close)

  def _close(self) -> None:
    if self.transport is not None:
      self.transport.close()

  def _set_partial(self, partial: bool) -> None:
    if partial != self.partial:
      self.partial = partial
      self.service.batcher.receiving(+1 if partial else -1)

  @property
  def closed(self) -> bool:
    """Lost, or closing: nothing more is read from or written to this connection."""
    return self.transport is None or self.transport.is_closing()

  def _write(self, data: bytes, close: bool = False) -> None:
    if self.closed:
      return
    self.transport.write(data)
    self._arm_idle()
    if close:
      self.transport.close()

  def _process(self) -> None:
    """Answers every complete request in the buffer, in order, until one needs the model (none once the connection
    is closed: a client gone while its answer was computed queues nothing more)."""
    while not self.busy and not self.closed:
      try:
        request = self._next_request() if self.buffer else None
      except HTTPError as e:  # the stream cannot be trusted any more
        self._set_partial(False)
        self._write(self.service.error(e, close=True), close=True)
        return
      if request is None:
        if self.eof:  # nothing more will come
          self._close()
        self._set_partial(bool(self.buffer) and not self.eof)
        return
      self._set_partial(False)
      method, path, body, close = request
      try:
        if path not in ROUTES:
          raise HTTPError(404, f"no such path {path!r}; endpoints: POST /recommend, GET /healthz")
        if ROUTES[path] != method:
          raise HTTPError(405, f"{path} takes {ROUTES[path]}, not {method}")
        if method == "GET":
          self._write(self.service.response(200, self.service.health(), close), close)
          continue
      except HTTPError as e:
        answer = self.service.error(e, close)
        self._write(answer[:answer.index(b"\r\n\r\n") + 4] if method == "HEAD" else answer, close)
        continue
      self.busy = True
      asyncio.get_running_loop().create_task(self._recommend(body, close))

  async def _recommend(self, body: bytes, close: bool) -> None:
    try:
      answer = self.service.response(200, await self.service.recommend(body), close)
    except HTTPError as e:
      answer = self.service.error(e, close)
    except Exception as e:  # pylint: disable=broad-except
      log.exception("request failed")
      answer = self.service.error(HTTPError(500, f"internal error: {type(e).__name__}: {e}"), close)
    self._write(answer, close)
    self.busy = False
    self._process()

  def _next_request(self) -> Optional[tuple[str, str, bytes, bool]]:
    """(method, path, body, close after answering) of the first complete request in the buffer, None while it is
    incomplete; HTTPError for one that cannot be answered on this connection. The head is parsed once: a body
    arriving in many chunks only checks its length."""
    if self._head is None:
      self._head = self._parse_head()
      if self._head is None:
        return None
    end, method, target, n, close = self._head
    if len(self.buffer) < end + 4 + n:
      return None
    body = self.buffer[end + 4:end + 4 + n]
    self.buffer = self.buffer[end + 4 + n:]
    self._head = None
    return method, target.split("?", 1)[0], body, close

  def _parse_head(self) -> Optional[tuple[int, str, str, int, bool]]:
    """(end of the head, method, target, body length, close) of the buffered request once its head is complete."""
    end = self.buffer.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
    if end < 0:
      if len(self.buffer) >= MAX_HEADER_BYTES + 4:
        raise HTTPError(431, f"request line and headers over {MAX_HEADER_BYTES} bytes")
      return None
    lines = self.buffer[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
      raise HTTPError(400, f"malformed request line {lines[0][:100]!r}")
    method, target, version = parts
    headers = {}
    for line in lines[1:]:
      name, sep, value = line.partition(":")
      if not sep or not name or name != name.strip():
        raise HTTPError(400, f"malformed header line {line[:100]!r}")
      headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
      raise HTTPError(411, "a Content-Length header is required (no Transfer-Encoding)")
    length = headers.get("content-length")
    if length is None:
      if method == "POST":
        raise HTTPError(411, "a Content-Length header is required")
      length = "0"
    try:
      n = int(length)
    except ValueError:
      raise HTTPError(400, f"Content-Length {length!r} is not an integer") from None
    if n < 0 or n > self.service.max_body:
      raise HTTPError(413, f"body of {n} bytes; at most {self.service.max_body}")
    connection = headers.get("connection", "").lower()
    close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
    return end, method, target, n, close


def run_forever(service: Service, announce: Callable[[str], None] = print) -> None:
  """Serves until interrupted (Ctrl-C / SIGTERM via KeyboardInterrupt), then closes the socket and the worker."""
  announce(f"listening on {service.url} (POST /recommend, GET /healthz)")
  try:
    service.serve_forever()
  except KeyboardInterrupt:
    pass
