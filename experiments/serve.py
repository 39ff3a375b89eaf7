"""Serves a trained workdir over HTTP: POST /recommend, GET /healthz (docs/serving.md).

  python experiments/serve.py --workdir "runs/beauty/backbone=srgnn__llm4sbr=True" --port 8080
  curl -s localhost:8080/recommend -d '{"sessions": [["B0000535UX", "B0000535UM"]], "k": 5}'

Listens on 127.0.0.1 unless --host says otherwise. Every bucket (--buckets) is compiled before the port opens;
requests that arrive together are answered in one model call of up to --max_batch sessions. Takes the model flags
of experiments/recommend.py (--epoch, --dataset_dir, --stage1_dir, --max_length, --max_k, and the LLM-intent flags).
Stops on Ctrl-C or SIGTERM.
"""

import logging
import signal
import sys
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import recommend  # pylint: disable=g-import-not-at-top  (defines the model flags)
from llm4sbr_jax import http_service

_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (loopback by default).")
_PORT = flags.DEFINE_integer("port", 8080, "Port (0: any free port; the chosen one is printed).")
_BUCKETS = flags.DEFINE_list("buckets", ["1", "8", "64"], "Batch sizes (sessions) compiled at start-up.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 0, "Sessions per model call and per request (0: the largest "
                                  "bucket).")
_MAX_WAIT = flags.DEFINE_float("max_wait_ms", 2.0, "How long the batcher may hold the oldest request for others "
                               "that are being received (never when none is).")
_MAX_QUEUE = flags.DEFINE_integer("max_queue", 1024, "Queued requests beyond which new ones get 503.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 60.0, "A request not answered in this time gets 503 (LLM intents take "
                              "seconds per session: keep --max_batch small).")


def _interrupt(signum, frame):
  del signum, frame
  signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the shutdown
  raise KeyboardInterrupt  # SIGTERM stops the server like Ctrl-C: socket closed, worker joined


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  if not recommend._WORKDIR.value:  # pylint: disable=protected-access
    sys.exit("error: --workdir is required")
  try:
    buckets = [int(b) for b in _BUCKETS.value]
  except ValueError:
    sys.exit(f"error: --buckets {','.join(_BUCKETS.value)}: expected integers")
  try:
    run, live = recommend.load_model()
    rec = recommend.build_recommender(run, live, buckets)
    service = http_service.Service(rec, _HOST.value, _PORT.value, _MAX_BATCH.value or None, _MAX_WAIT.value,
                                   _MAX_QUEUE.value, timeout_s=_TIMEOUT.value)
  except recommend.ERRORS as e:
    sys.exit(f"error: {e}")
  except OSError as e:  # the port is taken, or the address is not local
    sys.exit(f"error: cannot listen on {_HOST.value}:{_PORT.value} ({e.strerror or e})")
  signal.signal(signal.SIGTERM, _interrupt)
  http_service.run_forever(service, lambda line: print(line, flush=True))


if __name__ == "__main__":
  app.run(main)
