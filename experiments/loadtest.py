"""Load test of the HTTP service on loopback: latency percentiles and throughput at several client counts.

  python experiments/loadtest.py --workdir "runs/beauty/backbone=srgnn__llm4sbr=False" \
    --workdir "runs/beauty/backbone=srgnn__llm4sbr=True" --out runs/loadtest_beauty

For each workdir it starts experiments/serve.py on 127.0.0.1 (any free port), waits until every bucket is
compiled, sends --warmup requests, then for each --clients level runs that many concurrent clients (asyncio, one
keep-alive connection each), every request one session of --split (raw item ids, drawn with --seed) and k = --k,
until --requests requests or --max_seconds, whichever comes first. Latency = send to full response, per request.
Writes <out>.md (table) and <out>.json (every figure, the server's batch sizes and compile count), and prints the
table. Bounded in requests and time; loopback only.
"""

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm4sbr_jax import dataset as dataset_lib  # pylint: disable=g-import-not-at-top

REPO = Path(__file__).resolve().parents[1]
_WORKDIRS = flags.DEFINE_multi_string("workdir", [], "Training workdirs to serve, one after the other.")
_CLIENTS = flags.DEFINE_list("clients", ["1", "8", "64"], "Concurrent client counts.")
_REQUESTS = flags.DEFINE_integer("requests", 3000, "At most this many requests per level.")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 20.0, "At most this long per level.")
_WARMUP = flags.DEFINE_integer("warmup", 200, "Requests before the measured levels (one client).")
_K = flags.DEFINE_integer("k", 20, "Items per recommendation.")
_SPLIT = flags.DEFINE_string("split", "test", "Sessions are this split's prefixes.")
_SEED = flags.DEFINE_integer("seed", 0, "Which sessions.")
_MAX_WAIT = flags.DEFINE_float("max_wait_ms", 2.0, "The server's --max_wait_ms.")
_BUCKETS = flags.DEFINE_string("buckets", "1,8,64", "The server's --buckets.")
_START_TIMEOUT = flags.DEFINE_float("start_timeout", 600.0, "Seconds to wait for the server to compile and listen.")
_OUT = flags.DEFINE_string("out", "runs/loadtest", "Output path prefix (.md and .json).")


def _bodies(workdir: str, count: int = 2000) -> list[bytes]:
  """Request bodies: one session each, raw item ids of random --split prefixes."""
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    dataset_dir = json.load(f)["config"]["dataset_dir"]
  ds = dataset_lib.load_dataset(dataset_dir)
  split = ds.splits[_SPLIT.value]
  rows = np.random.default_rng(_SEED.value).choice(len(split), size=min(count, len(split)), replace=False)
  return [json.dumps({"sessions": [[ds.raw_item_ids[i] for i in split.prefix(int(r))]], "k": _K.value}).encode()
          for r in rows]


async def _client(port: int, bodies: list[bytes], start: int, stride: int, state: dict) -> None:
  reader, writer = await asyncio.open_connection("127.0.0.1", port)
  try:
    k = start
    while state["sent"] < state["limit"] and time.perf_counter() < state["deadline"]:
      state["sent"] += 1
      body = bodies[k % len(bodies)]
      k += stride
      t = time.perf_counter()
      writer.write(b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
      head = await reader.readuntil(b"\r\n\r\n")
      length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
      payload = await reader.readexactly(length)
      state["latencies"].append(time.perf_counter() - t)
      if not head.startswith(b"HTTP/1.1 200"):
        state["errors"].append(head.split(b"\r\n", 1)[0].decode() + " " + payload[:200].decode(errors="replace"))
  finally:
    writer.close()


def _level(port: int, bodies: list[bytes], clients: int, limit: int, seconds: float) -> dict:
  state = {"sent": 0, "limit": limit, "deadline": time.perf_counter() + seconds, "latencies": [], "errors": []}

  async def run():
    await asyncio.gather(*(_client(port, bodies, c, clients, state) for c in range(clients)))

  t = time.perf_counter()
  asyncio.run(run())
  wall = time.perf_counter() - t
  lat = np.asarray(state["latencies"]) * 1000
  return {"clients": clients, "requests": len(lat), "errors": len(state["errors"]),
          "first_error": state["errors"][0] if state["errors"] else None, "seconds": wall,
          "throughput_rps": len(lat) / wall, "p50_ms": float(np.percentile(lat, 50)),
          "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99)),
          "mean_ms": float(lat.mean())}


def _cpu_seconds(pid: int) -> float:
  """User + system CPU seconds of a process so far (Linux /proc)."""
  with open(f"/proc/{pid}/stat", encoding="ascii") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get(port: int, path: str) -> dict:
  import http.client  # pylint: disable=g-import-not-at-top
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
  try:
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())
  finally:
    conn.close()


def _serve(workdir: str) -> tuple[subprocess.Popen, int]:
  cmd = [sys.executable, str(REPO / "experiments" / "serve.py"), "--workdir", workdir, "--host", "127.0.0.1",
         "--port", "0", "--buckets", _BUCKETS.value, "--max_wait_ms", str(_MAX_WAIT.value)]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
  deadline = time.time() + _START_TIMEOUT.value
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
    if found:
      return proc, int(found.group(1))
  proc.terminate()
  raise RuntimeError(f"{' '.join(cmd)}: no 'listening on' line (exit code {proc.poll()})")


def _markdown(results: list[dict]) -> str:
  lines = ["| model | clients | requests | p50 ms | p95 ms | p99 ms | throughput req/s | x 1 client | sessions per "
           "model call (mean) | CPU ms per request: server / load generator |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in results:
    base = r["levels"][0]["throughput_rps"]
    for lv in r["levels"]:
      lines.append(f"| {r['model']} | {lv['clients']} | {lv['requests']} | {lv['p50_ms']:.2f} | {lv['p95_ms']:.2f} | "
                   f"{lv['p99_ms']:.2f} | {lv['throughput_rps']:.0f} | {lv['throughput_rps'] / base:.1f} | "
                   f"{lv['mean_batch']:.1f} | {lv['server_cpu_ms']:.2f} / {lv['client_cpu_ms']:.2f} |")
  return "\n".join(lines)


def _mean_batch(before: dict, after: dict) -> float:
  """Mean sessions per model call between two /healthz snapshots."""
  calls = sessions = 0
  for size, count in after["batch_sizes"].items():
    n = count - before["batch_sizes"].get(size, 0)
    calls, sessions = calls + n, sessions + n * int(size)
  return sessions / max(calls, 1)


def main(argv):
  del argv
  if not _WORKDIRS.value:
    sys.exit("error: give --workdir (one or more)")
  clients = [int(c) for c in _CLIENTS.value]
  results = []
  for workdir in _WORKDIRS.value:
    try:
      bodies = _bodies(workdir)
    except (OSError, KeyError, ValueError) as e:
      sys.exit(f"error: {workdir}: cannot read its dataset ({e})")
    proc, port = _serve(workdir)
    try:
      health = _get(port, "/healthz")
      _level(port, bodies, 1, _WARMUP.value, _MAX_SECONDS.value)
      levels = []
      for c in clients:
        before = _get(port, "/healthz")
        server_cpu, client_cpu = _cpu_seconds(proc.pid), time.process_time()
        lv = _level(port, bodies, c, _REQUESTS.value, _MAX_SECONDS.value)
        # CPU milliseconds per request, server and load generator (both on this machine's cores)
        lv["server_cpu_ms"] = 1000 * (_cpu_seconds(proc.pid) - server_cpu) / max(lv["requests"], 1)
        lv["client_cpu_ms"] = 1000 * (time.process_time() - client_cpu) / max(lv["requests"], 1)
        lv["mean_batch"] = _mean_batch(before, _get(port, "/healthz"))
        levels.append(lv)
        print(f"{health['model']}: {c} clients: {lv['requests']} requests, p50 {lv['p50_ms']:.2f} ms, "
              f"p99 {lv['p99_ms']:.2f} ms, {lv['throughput_rps']:.0f} req/s, {lv['mean_batch']:.1f} sessions/call"
              + (f", {lv['errors']} errors ({lv['first_error']})" if lv["errors"] else ""), flush=True)
      after = _get(port, "/healthz")
    finally:
      proc.terminate()
      proc.wait(timeout=60)
    results.append({"model": health["model"], "workdir": workdir, "epoch": health["epoch"],
                    "buckets": health["buckets"], "compiles_at_start": health["compiles"],
                    "compiles_after": after["compiles"], "batch_sizes": after["batch_sizes"],
                    "served": after["served"], "levels": levels})
  table = _markdown(results)
  settings = {"k": _K.value, "split": _SPLIT.value, "max_wait_ms": _MAX_WAIT.value, "buckets": _BUCKETS.value,
              "requests_per_level": _REQUESTS.value, "max_seconds_per_level": _MAX_SECONDS.value,
              "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value + ".json", "w", encoding="utf-8") as f:
    json.dump({"settings": settings, "results": results}, f, indent=2)
  with open(_OUT.value + ".md", "w", encoding="utf-8") as f:
    f.write(table + "\n\nSettings: " + json.dumps(settings) + "\n")
  print("\n" + table)
  for r in results:
    print(f"{r['model']}: compiles {r['compiles_at_start']} at start-up, {r['compiles_after']} after the load")
  print(f"\nwrote {_OUT.value}.md and {_OUT.value}.json")


if __name__ == "__main__":
  app.run(main)
