"""The reference protocol (llm4sbr_jax/reference.py) against a plain-loop transcription of the official scripts.

`official_transcription` below is written from reading SR-GNN's `datasets/preprocess.py` and GCE-GNN's
`datasets/process_tmall.py` / `process_nowplaying.py`: the same dict-of-lists loops, with dates read as UTC
(`calendar.timegm` where the scripts call `time.mktime`). Synthetic files in each raw layout exercise the cases
where a shortcut would differ: interleaved session rows, out-of-order Diginetica timeframes, rows of one session on
different dates, sessions dated exactly on the split date, rare items, test items unseen in training, Tmall's
session-id cut and maximum lengths, ids with leading zeros.
"""

import calendar
import csv
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, SHARED_DATA
from llm4sbr_jax import raw, reference

DIGINETICA_SAMPLE = SHARED_DATA / "diginetica-sample" / "sample_train-item-views.csv"


def official_transcription(path, layout, window, max_length=None, max_session_id=None, fraction=None):
  """The official scripts' logic as plain loops; returns (train prefixes, train labels, test prefixes, test labels,
  item_dict raw id -> new id)."""
  sess_clicks, sess_date = {}, {}
  curid, curdate = -1, None
  delimiter = {"diginetica": ";", "yoochoose": ","}.get(layout, "\t")
  with open(path, newline="") as f:
    # The raw yoochoose-clicks.dat has no header; SR-GNN's readme asks users to add this one.
    names = ["session_id", "timestamp", "item_id", "category"]
    headerless = layout == "yoochoose" and f.readline().strip() != ",".join(names)
    f.seek(0)
    reader = csv.DictReader(f, delimiter=delimiter, fieldnames=names if headerless else None)
    for data in reader:
      if layout in ("diginetica", "yoochoose"):
        sessid = data["session_id"]
      else:
        sessid = int(data["SessionId"])
        if max_session_id is not None and sessid > max_session_id:
          break
      if curdate is not None and curid != sessid:
        sess_date[curid] = curdate
      curid = sessid
      if layout == "diginetica":
        item = (data["item_id"], int(data["timeframe"]))
        curdate = calendar.timegm(time.strptime(data["eventdate"], "%Y-%m-%d"))
      elif layout == "yoochoose":
        item = data["item_id"]
        curdate = calendar.timegm(time.strptime(data["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
      else:
        item = int(data["ItemId"])
        curdate = float(data["Time"])
      if sessid in sess_clicks:
        sess_clicks[sessid] += [item]
      else:
        sess_clicks[sessid] = [item]
    sess_date[curid] = curdate
  if layout == "diginetica":
    for s in sess_clicks:
      sess_clicks[s] = [c[0] for c in sorted(sess_clicks[s], key=lambda c: c[1])]
  for s in list(sess_clicks):
    if len(sess_clicks[s]) == 1:
      del sess_clicks[s]
      del sess_date[s]
  counts = {}
  for s in sess_clicks:
    for i in sess_clicks[s]:
      counts[i] = counts.get(i, 0) + 1
  for s in list(sess_clicks):
    filtered = [i for i in sess_clicks[s] if counts[i] >= 5]
    if len(filtered) < 2 or (max_length is not None and len(filtered) > max_length):
      del sess_clicks[s]
      del sess_date[s]
    else:
      sess_clicks[s] = filtered
  dates = list(sess_date.items())
  split = max(d for _, d in dates) - window
  train = sorted([x for x in dates if x[1] < split], key=lambda x: x[1])
  test = sorted([x for x in dates if x[1] > split], key=lambda x: x[1])
  item_dict, train_seqs, test_seqs = {}, [], []
  for s, _ in train:
    out = []
    for i in sess_clicks[s]:
      if i not in item_dict:
        item_dict[i] = len(item_dict) + 1
      out.append(item_dict[i])
    train_seqs.append(out)
  for s, _ in test:
    out = [item_dict[i] for i in sess_clicks[s] if i in item_dict]
    if len(out) >= 2:
      test_seqs.append(out)

  def augment(seqs):
    xs, ys = [], []
    for seq in seqs:
      for i in range(1, len(seq)):
        xs.append(seq[:-i])
        ys.append(seq[-i])
    return xs, ys

  (trx, trl), (tex, tel) = augment(train_seqs), augment(test_seqs)
  if fraction:
    cut = int(len(trx) / fraction)
    trx, trl = trx[-cut:], trl[-cut:]
  return trx, trl, tex, tel, item_dict


# ---------------------------------------------------------------------------------------------------------------
# Synthetic raw files


def _sessions(rng, num_sessions, num_items=40):
  """Random sessions (lists of item numbers) with a skewed item distribution: some items stay under 5 clicks."""
  weights = 1.0 / np.arange(1, num_items + 1) ** 1.1
  weights /= weights.sum()
  return [rng.choice(num_items, size=int(rng.integers(1, 9)), p=weights).tolist() for _ in range(num_sessions)]


# Appended last (the latest dates): item 90 occurs 5 times, only in test sessions, so the test set loses clicks.
LATE_SESSIONS = [[0, 90, 1, 90], [90, 2, 90, 90], [90, 90]]


def _interleave(rng, rows, key_of):
  """Moves a few rows later in the file, so some sessions' rows are not contiguous."""
  rows = list(rows)
  for _ in range(len(rows) // 15):
    a = int(rng.integers(0, len(rows) - 3))
    row = rows.pop(a)
    rows.insert(a + int(rng.integers(1, 4)), row)
  assert any(key_of(rows[k]) != key_of(rows[k + 1]) and key_of(rows[k]) == key_of(rows[k + 2])
             for k in range(len(rows) - 2))
  return rows


def write_diginetica(path, rng):
  rows = []
  for sid, session in enumerate(_sessions(rng, 160) + LATE_SESSIONS, 1):
    day = int(rng.integers(0, 20)) if sid <= 160 else 20
    for item in session:
      # Mostly one date per session; sometimes the session's rows span two days (the last row's counts).
      d = day + int(rng.random() < 0.1)
      rows.append((str(sid), "NA", str(1000 + item), str(int(rng.integers(0, 50))), f"2016-05-{1 + d:02d}"))
  rows = _interleave(rng, rows, lambda r: r[0])
  path.write_text("session_id;user_id;item_id;timeframe;eventdate\n" + "".join(";".join(r) + "\n" for r in rows))


def write_yoochoose(path, rng, header=False):
  rows, base = [], calendar.timegm((2014, 4, 1, 0, 0, 0))
  last = base + 6 * 86400 + 3600  # the date of the (surviving) late sessions: the maximum date
  for sid, session in enumerate(_sessions(rng, 400) + LATE_SESSIONS, 1):
    t = base + int(rng.integers(0, 6 * 86400))
    for item in session:
      t += int(rng.integers(1, 300))
      # Ten sessions are dated exactly on the split date (neither train nor test).
      rows.append([str(sid), last if sid > 400 else last - 86400 if 10 <= sid < 20 else t, str(214000000 + item),
                   "0"])
  stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{t % 1000:03d}Z"
  lines = [f"{s},{stamp(t)},{i},{c}\n" for s, t, i, c in _interleave(rng, rows, lambda r: r[0])]
  path.write_text(("session_id,timestamp,item_id,category\n" if header else "") + "".join(lines))


def write_session_rec(path, rng, max_session_id=None, span=1000.0, step=20.0):
  """Sessions starting within `span` Time units, clicks up to `step` apart; the late sessions come first in the
  file (before Tmall's cut row), the 6th session has 45 clicks."""
  rows = []
  first = max_session_id - 200 if max_session_id else 1
  sessions = LATE_SESSIONS + _sessions(rng, 260, num_items=30)
  sessions[5] = [0, 1, 2] * 15  # 45 clicks on common items: above both maximum lengths
  for k, session in enumerate(sessions):
    late = k < len(LATE_SESSIONS)
    t = 1e6 + (span + step if late else float(np.floor(rng.random() * span))) + (0.5 if k % 7 == 0 else 0.0)
    for item in session:
      rows.append([first + k, f"{item:03d}" if k % 5 == 0 else str(item), t])
      t += float(np.floor(rng.random() * step))
  if max_session_id:  # reading stops at the first id above the cut, even before rows with smaller ids
    rows.insert(len(rows) - 30, [max_session_id + 1, "1", 5000.0])
  text = "UserId\tItemId\tSessionId\tTime\n" + "".join(f"7\t{i}\t{s}\t{t!r}\n" for s, i, t in rows)
  path.write_text(text)


def _check_equal(ds, expected):
  trx, trl, tex, tel, item_dict = expected
  assert ds.num_items == len(item_dict)
  assert ds.raw_item_ids[1:] == [str(raw_id) for raw_id, _ in sorted(item_dict.items(), key=lambda kv: kv[1])]
  for split, (xs, ys) in (("train", (trx, trl)), ("test", (tex, tel))):
    s = ds.splits[split]
    assert [s.prefix(i).tolist() for i in range(len(s))] == xs, split
    assert s.targets.tolist() == ys, split


CASES = {  # dataset -> (writer, transcription arguments)
    "diginetica": (write_diginetica, dict(layout="diginetica", window=7 * 86400)),
    "yoochoose1_64": (write_yoochoose, dict(layout="yoochoose", window=86400, fraction=64)),
    "yoochoose1_4": (lambda p, r: write_yoochoose(p, r, header=True), dict(layout="yoochoose", window=86400,
                                                                          fraction=4)),
    "tmall": (lambda p, r: write_session_rec(p, r, 120000),
              dict(layout="tmall", window=100, max_length=40, max_session_id=120000)),
    "nowplaying": (lambda p, r: write_session_rec(p, r, span=600 * 86400.0, step=3600.0),
                   dict(layout="nowplaying", window=60 * 86400, max_length=30)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_sequences_as_the_official_logic(name, tmp_path):
  writer, kwargs = CASES[name]
  path = tmp_path / reference.DATASETS[name].files[0]
  writer(path, np.random.default_rng(len(name)))
  bench = reference.DATASETS[name]
  ds = reference.preprocess(reference.load(name, raw_dir=str(tmp_path), progress=False), name, bench)
  expected = official_transcription(str(path), **kwargs)
  _check_equal(ds, expected)
  stats = ds.extra_stats
  assert len(ds.splits["train"]) and len(ds.splits["test"]) and not len(ds.splits["valid"])
  assert stats["test_items_removed"] > 0  # the unseen-item path ran
  if name.startswith("yoochoose"):
    assert stats["sessions_on_split_date"] > 0
    # The cut can split a session: the boundary session keeps only its shorter prefixes.
    assert len(ds.splits["train"]) == stats["full_train_samples"] // bench.train_fraction
  if name == "tmall":
    assert stats["raw_stopped_at_line"] == stats["raw_rows"] + 2  # the header, the rows read, then the cut row
  if name in ("tmall", "nowplaying"):  # the 45-click session is gone; ids with leading zeros are one item
    assert stats["max_session_length"] <= bench.max_session_length
    assert "\t001\t" in path.read_text() and all(r == str(int(r)) for r in ds.raw_item_ids[1:])


def test_validation_split_is_a_seeded_share_of_train(tmp_path):
  path = tmp_path / "train-item-views.csv"
  write_diginetica(path, np.random.default_rng(0))
  clicks = reference.load("diginetica", path=str(path), progress=False)
  bench = reference.DATASETS["diginetica"]
  full = reference.preprocess(clicks, "d", bench)
  ds = reference.preprocess(clicks, "d", bench, valid_size=0.25, seed=3)
  again = reference.preprocess(clicks, "d", bench, valid_size=0.25, seed=3)
  n = len(full.splits["train"])
  assert len(ds.splits["valid"]) == int(np.ceil(0.25 * n)) and len(ds.splits["train"]) == n - len(ds.splits["valid"])
  assert ds.fingerprint == again.fingerprint != full.fingerprint
  both = sorted(ds.splits["train"].targets.tolist() + ds.splits["valid"].targets.tolist())
  assert both == sorted(full.splits["train"].targets.tolist())
  np.testing.assert_array_equal(ds.splits["test"].targets, full.splits["test"].targets)


@pytest.mark.skipif(not DIGINETICA_SAMPLE.exists(), reason="../shared/data/diginetica-sample is absent")
def test_diginetica_sample_gives_the_official_n_node():
  ds = reference.preprocess(reference.load("diginetica", raw_dir=str(DIGINETICA_SAMPLE.parent), progress=False),
                            "diginetica", reference.DATASETS["diginetica"])
  assert ds.num_items + 1 == 310  # SR-GNN's main.py: n_node = 310 for `sample`
  _check_equal(ds, official_transcription(str(DIGINETICA_SAMPLE), "diginetica", 7 * 86400))
  assert (len(ds.splits["train"]), len(ds.splits["test"])) == (1205, 99)
  assert ds.extra_stats["avg_session_length"] == pytest.approx(1812 / 508)


# ---------------------------------------------------------------------------------------------------------------
# Errors


DIGI_HEADER = "session_id;user_id;item_id;timeframe;eventdate\n"
TMALL_HEADER = "UserId\tItemId\tSessionId\tTime\n"


@pytest.mark.parametrize("layout,text,message", [
    ("diginetica", DIGI_HEADER + "1;NA;5;10;2016-05-01\n1;NA;6;x;2016-05-01\n",
     r"line 3: field 'timeframe': expected an integer, got 'x'"),
    ("diginetica", DIGI_HEADER + "1;NA;5;10;2016-05-01\n1;NA;6;11;05/01/2016\n",
     r"line 3: field 'eventdate': expected a date YYYY-MM-DD, got '05/01/2016'"),
    ("diginetica", DIGI_HEADER + "1;NA;5;10;2016-02-30\n",
     r"line 2: field 'eventdate': expected a date YYYY-MM-DD \(a valid calendar date\), got '2016-02-30'"),
    ("diginetica", DIGI_HEADER + "1;NA;5;10\n", r"line 2: expected 5 ';'-separated columns .* got 4"),
    ("diginetica", DIGI_HEADER + "1;NA;;10;2016-05-01\n", r"line 2: field 'item_id': expected a non-empty id"),
    ("diginetica", "session_id;item_id;eventdate\n1;5;2016-05-01\n",
     r"line 1: the header \['session_id', 'item_id', 'eventdate'\] lacks the column\(s\) \['timeframe'\]"),
    ("diginetica", "", r"no rows; expected Diginetica train-item-views.csv"),
    ("diginetica", DIGI_HEADER, r"no data rows; expected Diginetica"),
    ("yoochoose", "1,2014-04-07T10:51:09.277Z,214536502,0\n1,2014-04-07 10:54:09,214536500,0\n",
     r"line 2: field 'timestamp': expected an ISO 8601 time YYYY-MM-DDTHH:MM:SS\[...\], got '2014-04-07 10:54:09'"),
    ("yoochoose", "1,2014-04-07T10:51:09.277Z,214536502\n", r"line 1: expected 4 ','-separated columns"),
    ("yoochoose", "1,2014-13-07T10:51:09.277Z,214536502,0\n", r"line 1: field 'timestamp': .*valid calendar date"),
    ("session_rec", TMALL_HEADER + "7\t12\t1\t100.5\n7\t1x\t1\t101\n",
     r"line 3: field 'ItemId': expected an integer, got '1x'"),
    ("session_rec", TMALL_HEADER + "7\t12\tA\t100.5\n", r"line 2: field 'SessionId': expected an integer, got 'A'"),
    ("session_rec", TMALL_HEADER + "7\t12\t1\tnan\n", r"line 2: field 'Time': expected a finite number, got 'nan'"),
    ("session_rec", TMALL_HEADER + "7\t12\t1\tsoon\n", r"line 2: field 'Time': expected a finite number"),
    ("session_rec", "UserId\tItemId\tTime\n7\t12\t100\n",
     r"line 1: the header .* lacks the column\(s\) \['SessionId'\]"),
])
def test_malformed_rows_name_file_line_and_field(layout, text, message, tmp_path):
  path = tmp_path / "clicks.txt"
  path.write_text(text)
  lay = {"diginetica": reference.DIGINETICA, "yoochoose": reference.YOOCHOOSE,
         "session_rec": reference.SESSION_REC}[layout]
  with pytest.raises(raw.RawDataError, match=str(path).replace(".", r"\.") + ": " + message):
    reference.read_clicks(str(path), lay)


def test_missing_files_say_where_to_get_them(tmp_path):
  with pytest.raises(raw.RawDataError, match=r"cannot be downloaded automatically; get dataset15.csv .*--raw_dir"):
    reference.raw_file("tmall")
  with pytest.raises(raw.RawDataError, match=r"none of \['train-item-views.csv', 'sample_train-item-views.csv'\] "
                                             r"found; expected train-item-views.csv from CIKM Cup 2016"):
    reference.raw_file("diginetica", raw_dir=str(tmp_path))


@pytest.mark.parametrize("row, message", [
    ("{s};NA;{s};1;2016-05-01\n{s};NA;{t};2;2016-05-01\n",  # every item seen once: all filtered out
     r"train-item-views.csv: no session of length >= 2 is left after the reference filters \(40 rows, 20 sessions"),
    ("{s};NA;{u};1;2016-05-01\n{s};NA;{v};2;2016-05-01\n",  # every session on the last date: no training session
     r"no training session: all 20 sessions left after the filters are dated within 604800 of the last date")])
def test_filters_leaving_nothing_and_no_test_session_are_clear_errors(tmp_path, row, message):
  path = tmp_path / "train-item-views.csv"
  path.write_text(DIGI_HEADER + "".join(row.format(s=s, t=s + 100, u=s % 2, v=1 - s % 2) for s in range(20)))
  with pytest.raises(raw.RawDataError, match=message):
    reference.preprocess(reference.load("diginetica", path=str(path), progress=False), "d",
                         reference.DATASETS["diginetica"])


def test_prepare_data_launcher(tmp_path):
  path = tmp_path / "train-item-views.csv"
  write_diginetica(path, np.random.default_rng(0))
  out = tmp_path / "processed"
  cmd = [sys.executable, str(REPO / "experiments" / "prepare_data.py"), "--dataset", "diginetica", "--protocol",
         "reference", "--raw_dir", str(tmp_path), "--valid_size", "0", "--out_dir", str(out)]
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  from llm4sbr_jax import dataset  # pylint: disable=g-import-not-at-top
  ds = dataset.load_dataset(str(out))
  assert ds.protocol["protocol"] == "reference" and "fingerprint" in result.stdout
  _check_equal(ds, official_transcription(str(path), "diginetica", 7 * 86400))
  path.write_text(DIGI_HEADER + "1;NA;5;x;2016-05-01\n")
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr  # the one error line comes after the progress bar
  assert result.stderr.strip().splitlines()[-1] == (f"error: {path}: line 2: field 'timeframe': expected an integer, "
                                                    "got 'x'")
  result = subprocess.run(cmd[:5] + ["paper"] + cmd[6:], capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith("error: --dataset diginetica")
