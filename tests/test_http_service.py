"""The HTTP service: answers equal the library's, one 4xx per kind of bad request (never a 500, never down), batched
concurrent requests of varied sizes without a recompile, a model failure answered 500 with the service still up."""

import http.client
import json
import socket
import struct
import threading
import time

import jax
import numpy as np
import pytest

from llm4sbr_jax import dataset, graphs, http_service, serving, synthetic, tasks
from experiments.configs import default

BUCKETS = (1, 4, 16)


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
  """A freshly initialised SR-GNN on a synthetic catalog (the HTTP layer does not care whether it was trained)."""
  data_dir = tmp_path_factory.mktemp("http") / "data"
  dataset.save_dataset(synthetic.make_dataset(50, 300, 4.0, 10, seed=0), str(data_dir))
  ds = dataset.load_dataset(str(data_dir))
  c = default.get_config()
  c.dataset_dir, c.hidden = str(data_dir), 16
  task = tasks.build_task(c, ds)
  params = jax.jit(task.init)(jax.random.PRNGKey(0), serving.template_batch(task, graphs.Budget(1, 8, 8, 8)))
  run = serving.Run(workdir="(initialised)", config=c, dataset=ds, task=task, params=jax.device_get(params),
                    epoch=0, best_epoch=0, label="SR-GNN")
  return serving.Recommender(run, buckets=BUCKETS, max_k=25)


@pytest.fixture()
def service(rec):
  svc = http_service.Service(rec, port=0, max_wait_ms=5.0, max_body_bytes=4096)
  svc.start()
  yield svc
  svc.close()


def _request(service, method, path, body=None, headers=None):
  conn = http.client.HTTPConnection(*service.address, timeout=30)
  try:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())
  finally:
    conn.close()


def _post(service, payload):
  body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
  return _request(service, "POST", "/recommend", body)


def test_answers_equal_the_library_and_health(service, rec):
  names = rec.run.dataset.item_names
  status, out = _post(service, {"sessions": [["3", 7, names[9]], [names[12].upper()]], "k": 6})
  assert status == 200 and out["model"] == "SR-GNN" and out["k"] == 6
  direct = rec.recommend([np.asarray([3, 7, 9], np.int32), np.asarray([12], np.int32)], 6)
  for got, want in zip(out["recommendations"], direct):
    assert got["session"] == want["session"]
    assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]]
    np.testing.assert_allclose([i["score"] for i in got["items"]], [i["score"] for i in want["items"]], rtol=1e-6)
    assert got["items"][0]["name"] == names[int(got["items"][0]["item_id"])]
  assert _post(service, {"sessions": [["3"]]})[1]["k"] == http_service.DEFAULT_K
  status, health = _request(service, "GET", "/healthz")
  assert status == 200 and health["status"] == "ok" and health["buckets"] == list(BUCKETS)
  assert health["compiles"] == len(BUCKETS) and health["max_batch"] == BUCKETS[-1]


BAD = {  # kind -> (body, status, text in the message, field)
    "malformed JSON": (b'{"sessions": [["3"]', 400, "not valid JSON", None),
    "not UTF-8": (b'{"sessions": [["\xff"]]}', 400, "not valid JSON", None),
    "nested too deeply": (b"[" * 2000 + b"]" * 2000, 400, "nested too deeply", None),
    "not an object": (b'[["3"]]', 400, "expected a JSON object", None),
    "unknown field": ({"sessions": [["3"]], "kk": 5}, 400, "unknown field(s) ['kk']", "kk"),
    "missing sessions": ({"k": 5}, 400, "missing field", "sessions"),
    "sessions not a list": ({"sessions": "3"}, 400, "expected a list of sessions", "sessions"),
    "no session": ({"sessions": []}, 400, "no session given", "sessions"),
    "too many sessions": ({"sessions": [["3"]] * 17}, 400, "17 sessions; at most 16", "sessions"),
    "session not a list": ({"sessions": [["3"], "4"]}, 400, "expected a list of item ids", "sessions[1]"),
    "empty session": ({"sessions": [["3"], []]}, 400, "empty session", "sessions[1]"),
    "too long session": ({"sessions": [["3"] * 11]}, 400, "11 items; this model takes sessions of at most 10",
                         "sessions[0]"),
    "unknown id": ({"sessions": [["3", "999"]]}, 400, "unknown item '999'", "sessions[0][1]"),
    "unknown name": ({"sessions": [["item 4 (clustr 0)"]]}, 400, "close matches: 'item 4 (cluster 0)'",
                     "sessions[0][0]"),
    "wrong item type": ({"sessions": [["3", {"id": 4}]]}, 400, "got dict", "sessions[0][1]"),
    "K too small": ({"sessions": [["3"]], "k": 0}, 400, "K must lie in 1..25", "k"),
    "K too large": ({"sessions": [["3"]], "k": 26}, 400, "K must lie in 1..25", "k"),
    "K wrong type": ({"sessions": [["3"]], "k": "5"}, 400, "expected an integer, got str", "k"),
    "K boolean": ({"sessions": [["3"]], "k": True}, 400, "expected an integer, got bool", "k"),
    "explain wrong type": ({"sessions": [["3"]], "explain": "yes"}, 400, "expected true or false", "explain"),
    "explain of a bare model": ({"sessions": [["3"]], "explain": True}, 400, "no intents to explain", "explain"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_request_gets_its_4xx(service, kind):
  body, status, text, field = BAD[kind]
  got, out = _post(service, body)
  assert got == status and text in out["error"], out
  assert out.get("field") == field
  assert _post(service, {"sessions": [["3"]], "k": 2})[0] == 200  # still serving


def test_protocol_errors(service):
  assert _request(service, "GET", "/nope")[0] == 404
  assert _request(service, "POST", "/healthz", b"{}")[0] == 405
  assert _request(service, "GET", "/recommend")[0] == 405
  assert _request(service, "DELETE", "/recommend")[0] == 405
  conn = http.client.HTTPConnection(*service.address, timeout=30)  # no Content-Length
  conn.putrequest("POST", "/recommend")
  conn.endheaders()
  resp = conn.getresponse()
  assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
  conn.close()
  status, out = _request(service, "POST", "/recommend", b"x" * (service.max_body + 1))
  assert status == 413 and "at most" in out["error"]
  status, health = _request(service, "GET", "/healthz")
  assert status == 200 and "500" not in health["served"]


def _raw(service, data: bytes) -> bytes:
  """Sends raw bytes on a fresh connection and reads until the server closes it or 10 s pass."""
  with socket.create_connection(service.address, timeout=10) as sock:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    chunks = []
    while chunk := sock.recv(65536):
      chunks.append(chunk)
  return b"".join(chunks)


def _answers(raw: bytes) -> list[tuple[int, dict]]:
  """(status, JSON body) of every response in a byte stream."""
  out = []
  while raw:
    head, _, raw = raw.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    out.append((int(head.split(b" ")[1]), json.loads(raw[:length])))
    raw = raw[length:]
  return out


def _post_bytes(body: bytes, version: str = "1.1") -> bytes:
  return (f"POST /recommend HTTP/{version}\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def test_pipelined_requests_are_answered_in_order(service):
  bodies = [json.dumps({"sessions": [["3"]] * n, "k": n}).encode() for n in (1, 3, 2)]
  got = _answers(_raw(service, b"".join(_post_bytes(b) for b in bodies[:2]) + b"GET /healthz HTTP/1.1\r\n\r\n"
                      + _post_bytes(b"{") + _post_bytes(bodies[2])))
  assert [status for status, _ in got] == [200, 200, 200, 400, 200]
  assert [out["k"] for _, out in (got[0], got[1], got[4])] == [1, 3, 2]
  assert [len(out["recommendations"]) for _, out in (got[0], got[1], got[4])] == [1, 3, 2]
  assert got[2][1]["status"] == "ok"


def test_requests_trickling_in_small_pieces_are_answered(service):
  """Heads and bodies split over many packets (the head is parsed once, the body waits for its length)."""
  bodies = [json.dumps({"sessions": [["3"]] * n, "k": n}).encode() for n in (2, 1)]
  data = b"".join(_post_bytes(b) for b in bodies)
  with socket.create_connection(service.address, timeout=10) as sock:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(data), 7):
      sock.sendall(data[i:i + 7])
      time.sleep(0.002)
    sock.shutdown(socket.SHUT_WR)
    chunks = []
    while chunk := sock.recv(65536):
      chunks.append(chunk)
  got = _answers(b"".join(chunks))
  assert [status for status, _ in got] == [200, 200]
  assert [out["k"] for _, out in got] == [2, 1]


def test_stream_errors_close_the_connection_and_the_service_stays_up(service):
  http10 = _raw(service, _post_bytes(b'{"sessions": [["3"]]}', "1.0"))
  assert http10.startswith(b"HTTP/1.1 200") and b"Connection: close" in http10
  for data, status, text in [(b"GARBAGE\r\n\r\n", 400, "malformed request line"),
                             (b"GET /healthz HTTP/1.1\r\nno colon\r\n\r\n", 400, "malformed header"),
                             (b"POST /recommend HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, "not an integer"),
                             (b"POST /recommend HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411, "Content"),
                             (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 70000, 431, "over 65536 bytes")]:
    got = _answers(_raw(service, data + _post_bytes(b'{"sessions": [["3"]]}')))  # the second request is not read
    assert len(got) == 1 and got[0][0] == status and text in got[0][1]["error"], (data[:40], got)
  head = _raw(service, b"HEAD /recommend HTTP/1.1\r\nConnection: close\r\n\r\n")
  assert head.startswith(b"HTTP/1.1 405") and head.endswith(b"\r\n\r\n")  # headers only
  with socket.create_connection(service.address, timeout=10) as sock:  # a client leaving mid-body
    sock.sendall(_post_bytes(b'{"sessions": [["3"]]}')[:-5])
  assert _post(service, {"sessions": [["3"]], "k": 2})[0] == 200


def test_a_client_gone_mid_answer_queues_nothing_more(rec):
  svc = http_service.Service(rec, port=0)
  calls = []

  def slow(sessions, explain):
    calls.append(len(sessions))
    time.sleep(0.5)  # the client resets the connection while this call runs
    return rec.score(sessions, explain)

  svc.batcher.fn = slow
  svc.start()
  try:
    with socket.create_connection(svc.address, timeout=10) as sock:  # two pipelined requests, then a reset
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
      sock.sendall(_post_bytes(b'{"sessions": [["3"]]}') * 2)
      time.sleep(0.2)  # received; the first one is in its model call
    time.sleep(1.0)  # the first answer is done; the second would be queued right after it
    assert calls == [1]
    assert _post(svc, {"sessions": [["3"]]})[0] == 200
  finally:
    svc.close()


def test_concurrent_varied_requests_batch_without_recompiling(service, rec):
  rng = np.random.default_rng(0)
  raw = rec.run.dataset.raw_item_ids
  payloads = [{"sessions": [[raw[i] for i in rng.integers(1, len(raw), size=int(rng.integers(1, 11)))]
                            for _ in range(int(rng.integers(1, 17)))], "k": int(rng.integers(1, 26))}
              for _ in range(120)]
  answers = [None] * len(payloads)

  def client(start):
    for j in range(start, len(payloads), 12):
      answers[j] = _post(service, payloads[j])

  threads = [threading.Thread(target=client, args=(t,)) for t in range(12)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  for payload, (status, out) in zip(payloads, answers):
    assert status == 200 and len(out["recommendations"]) == len(payload["sessions"])
    assert all(len(r["items"]) == payload["k"] for r in out["recommendations"])
  # Spot check: a request answered inside a batch equals the same sessions answered alone.
  alone = rec.recommend(rec.resolve(payloads[5]["sessions"]), payloads[5]["k"])
  np.testing.assert_allclose([i["score"] for r in answers[5][1]["recommendations"] for i in r["items"]],
                             [i["score"] for r in alone for i in r["items"]], rtol=1e-5, atol=1e-6)
  health = _request(service, "GET", "/healthz")[1]
  assert health["compiles"] == len(BUCKETS)  # compiled at start-up only
  assert max(int(k) for k in health["requests_per_call"]) > 1  # concurrent requests shared a model call
  assert max(int(k) for k in health["batch_sizes"]) <= BUCKETS[-1]


def test_model_failure_answers_500_and_the_service_survives(rec):
  svc = http_service.Service(rec, port=0)
  calls = []

  def flaky(sessions, explain):
    calls.append(len(sessions))
    if len(calls) == 1:
      raise RuntimeError("device lost")
    return rec.score(sessions, explain)

  svc.batcher.fn = flaky
  svc.start()
  try:
    status, out = _post(svc, {"sessions": [["3"]]})
    assert status == 500 and "device lost" in out["error"]
    assert _post(svc, {"sessions": [["3"]]})[0] == 200
  finally:
    svc.close()


def test_full_queue_answers_503(rec):
  svc = http_service.Service(rec, port=0, max_queue=0)
  svc.start()
  try:
    status, out = _post(svc, {"sessions": [["3"]]})
    assert status == 503 and "overloaded" in out["error"]
  finally:
    svc.close()
