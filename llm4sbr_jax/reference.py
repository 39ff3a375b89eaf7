"""The standard session-based benchmarks, prepared the way the official preprocessing scripts prepare them.

Diginetica, Yoochoose 1/64 and 1/4 (SR-GNN's `datasets/preprocess.py`), Tmall and Nowplaying (GCE-GNN's
`datasets/process_tmall.py` and `process_nowplaying.py`, the same script with tab-separated input): the numbers
SR-GNN, TAGNN, GCE-GNN and S2-DHCN report come from data prepared this way (`--protocol reference` of
`experiments/prepare_data.py`). Written from reading those scripts, vectorised with numpy; `tests/test_reference.py`
checks it against a plain-loop transcription of them.

Raw layouts (`read_clicks`; a malformed row raises `RawDataError` naming the file, the line and the field):

* Diginetica `train-item-views.csv` (CIKM Cup 2016; the SR-GNN repository ships `sample_train-item-views.csv`):
  `;`-separated with the header `session_id;user_id;item_id;timeframe;eventdate`; `timeframe` an integer,
  `eventdate` `YYYY-MM-DD`.
* Yoochoose `yoochoose-clicks.dat` (RecSys Challenge 2015): `,`-separated `session_id,timestamp,item_id,category`
  without a header (the header SR-GNN's readme asks users to add is accepted); `timestamp` ISO 8601
  (`2014-04-07T10:51:09.277Z`), read to the second as the script does (`[:19]`).
* Tmall `dataset15.csv` and Nowplaying `nowplaying.csv` (the session-rec files GCE-GNN's scripts read): tab-separated
  with a header naming `SessionId`, `ItemId` and `Time` (other columns ignored); ids integers (the scripts `int()`
  them, so `007` and `7` are one id), `Time` a number. Tmall is read until the first row whose `SessionId` exceeds
  120,000 (GCE-GNN's "first 120,000 sessions": its script stops at that row; it tests the third column, which is
  `SessionId` in `dataset15.csv`).

Preprocessing (`preprocess`), as the scripts do it:

1. A session's clicks in file order (Diginetica: stably sorted by `timeframe`); sessions in order of first
   appearance. A session's date is the date of its last row in the file (Diginetica: its `eventdate` day,
   Yoochoose: its timestamp, Tmall / Nowplaying: `Time`). Dates are read as UTC (the scripts use `time.mktime`,
   the machine's local time; the same as running them with `TZ=UTC`).
2. Drop sessions of length 1; count items over the remaining clicks; drop items seen fewer than 5 times; drop
   sessions left shorter than 2 (Tmall: or longer than 40, Nowplaying: 30). One pass, not iterated.
3. Split by date: with `split = max session date - window` (Diginetica 7 days, Yoochoose 1 day, Tmall 100 `Time`
   units, Nowplaying 60 days), sessions dated before `split` are training sessions and those after it test
   sessions; a session dated exactly `split` is in neither. Each set is ordered by date (stable).
4. Item ids 1..n in order of first appearance in the date-ordered training sessions. Test clicks on items absent
   from training are removed and test sessions left shorter than 2 dropped.
5. Samples: a session `s` of length n gives `(s[:-i], s[-i])` for i = 1..n-1, the longest prefix first.
6. Yoochoose 1/64 (1/4): the last `int(N / 64)` (`int(N / 4)`) of the N training samples, which can cut a session;
   the item table stays the full training set's (SR-GNN's `n_node = 37484` for both); the test set is the same.

Every sample's time is its session's date; `sessions` numbers the training sessions 0.. in date order, then the
test sessions. The official scripts have no validation split (SR-GNN's `--validation` draws a random share of the
training samples in `main.py`): `valid_size` > 0 carves a seeded random share of the training samples.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
from typing import Any, Iterator

import numpy as np

from llm4sbr_jax import preprocess as preprocess_lib
from llm4sbr_jax import raw as raw_lib
from llm4sbr_jax.dataset import PAD_NAME, ProcessedDataset, Split, offsets_from_counts, ragged_take

DAY = 86400
_CHUNK = 1 << 20  # rows converted to numpy at a time (bounds the Python temporaries of a 33M-row file)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
_INTEGER = re.compile(r"\s*[-+]?\d+\s*")


@dataclasses.dataclass(frozen=True)
class Layout:
  """A raw file layout as the official script reads it.

  Attributes:
    what: the layout in words (for error messages).
    sep: the column separator.
    key, item, date: the session id, item id and date columns.
    within: the column ordering a session's clicks (None: file order).
    columns: the columns of a file without a header (None: the first line must be a header naming the columns).
    integer_ids: session and item ids are integers (GCE-GNN's scripts `int()` them); otherwise kept as strings.
    date_format: `day` (`YYYY-MM-DD`), `second` (ISO 8601, read to the second) or `number`.
  """

  what: str
  sep: str
  key: str
  item: str
  date: str
  within: str | None = None
  columns: tuple[str, ...] | None = None
  integer_ids: bool = False
  date_format: str = "number"


DIGINETICA = Layout("Diginetica train-item-views.csv: ';'-separated with the header "
                    "session_id;user_id;item_id;timeframe;eventdate", ";", "session_id", "item_id", "eventdate",
                    within="timeframe", date_format="day")
YOOCHOOSE = Layout("Yoochoose yoochoose-clicks.dat: ','-separated session_id,timestamp,item_id,category "
                   "(no header, or exactly that header)", ",", "session_id", "item_id", "timestamp",
                   columns=("session_id", "timestamp", "item_id", "category"), date_format="second")
SESSION_REC = Layout("a tab-separated session-rec file with a header naming SessionId, ItemId and Time (as GCE-GNN's "
                     "process_tmall.py / process_nowplaying.py read it)", "\t", "SessionId", "ItemId", "Time",
                     integer_ids=True)


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One benchmark: its raw file, the official filters and split.

  Attributes:
    layout: the raw file layout.
    files: file names looked up in a raw directory, the first found is read.
    test_window: test sessions are those dated after (max date - test_window), in the date's units (seconds).
    max_session_length: sessions longer than this after filtering are dropped (None: no limit).
    max_session_id: reading stops at the first row whose session id exceeds this (Tmall).
    train_fraction: keep the last 1/train_fraction of the training samples (Yoochoose 1/64, 1/4).
    script: the official script.
    n_node: the `n_node` (items + 1) the official main.py sets for the full dataset.
    where: where users get the raw file.
  """

  layout: Layout
  files: tuple[str, ...]
  test_window: float
  script: str
  where: str
  max_session_length: int | None = None
  max_session_id: int | None = None
  train_fraction: int | None = None
  n_node: int | None = None


_SRGNN = "SR-GNN datasets/preprocess.py"
_YOOCHOOSE_WHERE = ("yoochoose-clicks.dat from the RecSys Challenge 2015 data (http://2015.recsyschallenge.com/"
                    "challenge.html or https://www.kaggle.com/chadgostopp/recsys-challenge-2015)")
_SESSION_REC_WHERE = ("the session-rec file from the Dropbox folder linked in GCE-GNN's issues #3 and #22 "
                      "(https://github.com/CCIIPLab/GCE-GNN/issues/22)")
DATASETS = {
    "diginetica": Benchmark(
        DIGINETICA, ("train-item-views.csv", "sample_train-item-views.csv"), 7 * DAY, _SRGNN,
        "train-item-views.csv from CIKM Cup 2016 track 2 (https://competitions.codalab.org/competitions/11161); "
        "SR-GNN's repository ships the sample datasets/sample_train-item-views.csv (n_node 310)", n_node=43098),
    "yoochoose1_64": Benchmark(YOOCHOOSE, ("yoochoose-clicks.dat",), DAY, _SRGNN, _YOOCHOOSE_WHERE,
                               train_fraction=64, n_node=37484),
    "yoochoose1_4": Benchmark(YOOCHOOSE, ("yoochoose-clicks.dat",), DAY, _SRGNN, _YOOCHOOSE_WHERE,
                              train_fraction=4, n_node=37484),
    "tmall": Benchmark(SESSION_REC, ("dataset15.csv",), 100, "GCE-GNN datasets/process_tmall.py",
                       "dataset15.csv (Tmall, IJCAI-15 user logs as sessions), " + _SESSION_REC_WHERE,
                       max_session_length=40, max_session_id=120000, n_node=40728),
    "nowplaying": Benchmark(SESSION_REC, ("nowplaying.csv",), 60 * DAY, "GCE-GNN datasets/process_nowplaying.py",
                            "nowplaying.csv, " + _SESSION_REC_WHERE, max_session_length=30, n_node=60417),
}


@dataclasses.dataclass(frozen=True)
class Clicks:
  """A raw click log as the official script reads it (one entry per row read, in file order)."""

  keys: np.ndarray  # [M] session ids (str, or int64 for integer-id layouts)
  items: np.ndarray  # str [M] raw item ids
  dates: np.ndarray  # float64 [M] the row's date in seconds (or `Time` units); a session's date is its last row's
  within: np.ndarray | None  # int64 [M] the order of a session's clicks (Diginetica timeframe); None: file order
  stopped_at_line: int | None = None  # the line whose session id stopped reading (Tmall's session-id cut)
  files: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return int(self.dates.shape[0])


# ----------------------------------------------------------------------------------------------------------------
# Reading


def _body(path: str, layout: Layout) -> tuple[tuple[str, ...], Iterator[tuple[int, str]]]:
  """The file's columns and its data lines (the header, if any, consumed)."""
  lines = raw_lib._lines(path, layout.what)  # pylint: disable=protected-access
  first = next(lines, None)
  if first is None:
    raise raw_lib.RawDataError(f"{path}: no rows; expected {layout.what}")
  names = tuple(first[1].split(layout.sep))
  if layout.columns is not None and names != layout.columns:  # a headerless file: the first line is data
    return layout.columns, itertools.chain([first], lines)
  needed = [c for c in (layout.key, layout.item, layout.date, layout.within) if c is not None]
  missing = [c for c in needed if c not in names]
  if missing:
    raise raw_lib.RawDataError(f"{path}: line {first[0]}: the header {list(names)} lacks the column(s) {missing}; "
                               f"expected {layout.what}")
  return names, lines


def _bad(path: str, number: int, field: str, expected: str, value: str) -> raw_lib.RawDataError:
  return raw_lib.RawDataError(f"{path}: line {number}: field '{field}': expected {expected}, got {value!r}")


def _integer(value: str, path: str, number: int, field: str) -> int:
  if not _INTEGER.fullmatch(value):
    raise _bad(path, number, field, "an integer", value)
  return int(value)


def _dates(values: list[str], numbers: list[int], path: str, layout: Layout) -> np.ndarray:
  """float64 seconds of one chunk of date fields (UTC), raising a located error for a malformed one."""
  if layout.date_format == "number":
    out = np.empty(len(values), np.float64)
    for k, (value, number) in enumerate(zip(values, numbers)):
      try:
        out[k] = float(value)
      except ValueError:
        out[k] = math.nan
      if not math.isfinite(out[k]):
        raise _bad(path, number, layout.date, "a finite number", value)
    return out
  pattern, unit, width = (_DATE, "D", 10) if layout.date_format == "day" else (_DATETIME, "s", 19)
  expected = "a date YYYY-MM-DD" if unit == "D" else "an ISO 8601 time YYYY-MM-DDTHH:MM:SS[...]"
  for value, number in zip(values, numbers):
    if not (pattern.fullmatch(value) if unit == "D" else pattern.match(value)):
      raise _bad(path, number, layout.date, expected, value)
  cut = [v[:width] for v in values]
  try:
    parsed = np.array(cut, dtype=f"datetime64[{unit}]")
  except ValueError:  # a well-formed but impossible date (2016-02-30): find its line
    for value, number in zip(values, numbers):
      try:
        np.datetime64(value[:width], unit)
      except ValueError:
        raise _bad(path, number, layout.date, f"{expected} (a valid calendar date)", value) from None
    raise
  return parsed.astype("datetime64[s]").astype(np.int64).astype(np.float64)


def read_clicks(path: str, layout: Layout, max_session_id: int | None = None, progress: bool = False) -> Clicks:
  """Reads a raw click log of `layout` (see the module docstring).

  Args:
    path: the file (`.gz` is read compressed).
    layout: `DIGINETICA`, `YOOCHOOSE` or `SESSION_REC`.
    max_session_id: stop at the first row whose (integer) session id exceeds this (Tmall: 120000).
    progress: a tqdm counter of the rows read.

  Raises:
    RawDataError: a missing file or header column, a row with the wrong number of columns, an empty id, a
      malformed number or date; the message names the file, the line and the field.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  columns, body = _body(path, layout)
  key, item, date = columns.index(layout.key), columns.index(layout.item), columns.index(layout.date)
  within = columns.index(layout.within) if layout.within else None
  parts: dict[str, list[np.ndarray]] = {"keys": [], "items": [], "dates": [], "within": []}
  chunk: dict[str, list] = {k: [] for k in ("keys", "items", "dates", "within", "numbers")}

  def flush():
    if chunk["numbers"]:
      parts["keys"].append(np.asarray(chunk["keys"], np.int64 if layout.integer_ids else str))
      parts["items"].append(np.asarray(chunk["items"], str))
      parts["dates"].append(_dates(chunk["dates"], chunk["numbers"], path, layout))
      parts["within"].append(np.asarray(chunk["within"], np.int64))
      for v in chunk.values():
        v.clear()

  stopped = None
  rows = tqdm(body, desc=os.path.basename(path), unit=" rows", disable=not progress, mininterval=1.0)
  for number, line in rows:
    fields = raw_lib._fields(line, layout.sep, columns, path, number)  # pylint: disable=protected-access
    k, i = fields[key], fields[item]
    if layout.integer_ids:
      k = _integer(k, path, number, layout.key)
      if max_session_id is not None and k > max_session_id:
        stopped = number
        break
      i = str(_integer(i, path, number, layout.item))
    elif not k or not i:
      raise _bad(path, number, layout.key if not k else layout.item, "a non-empty id", "")
    chunk["keys"].append(k)
    chunk["items"].append(i)
    chunk["dates"].append(fields[date])
    chunk["numbers"].append(number)
    if within is not None:
      chunk["within"].append(_integer(fields[within], path, number, layout.within))
    if len(chunk["numbers"]) >= _CHUNK:
      flush()
  flush()
  if not parts["dates"]:
    raise raw_lib.RawDataError(f"{path}: no data rows; expected {layout.what}")
  cat = {k: np.concatenate(v) for k, v in parts.items()}
  return Clicks(keys=cat["keys"], items=cat["items"], dates=cat["dates"],
                within=cat["within"] if within is not None else None, stopped_at_line=stopped)


def raw_file(name: str, raw_dir: str | None = None, path: str | None = None) -> str:
  """The raw file of benchmark `name`: `path`, else the first of its official file names found in `raw_dir`."""
  bench = DATASETS[name]
  if path is not None:
    if not os.path.isfile(path):
      raise raw_lib.RawDataError(f"{path}: file not found; expected {bench.layout.what}")
    return path
  if raw_dir is None:
    raise raw_lib.RawDataError(f"{name}: the raw file cannot be downloaded automatically; get {bench.where}, "
                               f"then pass --raw_dir (the folder holding {' or '.join(bench.files)})")
  for file in bench.files:
    if os.path.isfile(os.path.join(raw_dir, file)):
      return os.path.join(raw_dir, file)
  raise raw_lib.RawDataError(f"{raw_dir}: none of {list(bench.files)} found; expected {bench.where}")


def load(name: str, raw_dir: str | None = None, path: str | None = None, progress: bool = True) -> Clicks:
  """Reads benchmark `name`'s raw file (see `raw_file`) and records its checksums in `Clicks.files`."""
  file = raw_file(name, raw_dir, path)
  bench = DATASETS[name]
  clicks = read_clicks(file, bench.layout, bench.max_session_id, progress)
  record = {"file": os.path.basename(file), "md5": raw_lib.file_digest(file, "md5"),
            "sha256": raw_lib.file_digest(file, "sha256"), "checksum": "no published checksum; recorded"}
  return dataclasses.replace(clicks, files={"clicks": record})


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing


def _samples(seqs: np.ndarray, offsets: np.ndarray, first_session: int, times: np.ndarray) -> Split:
  """Each sequence `s` of length n gives `(s[:-i], s[-i])` for i = 1..n-1, the longest prefix first."""
  counts = np.diff(offsets) - 1
  session = np.repeat(np.arange(len(counts)), counts)
  position = np.arange(int(counts.sum())) - np.repeat(offsets_from_counts(counts)[:-1], counts)
  length = counts[session] - position  # n-1, n-2, ..., 1
  starts = offsets[:-1][session]
  gather, sample_offsets = ragged_take(starts, length)
  return Split(items=seqs[gather].astype(np.int32), offsets=sample_offsets,
               targets=seqs[starts + length].astype(np.int32), sessions=first_session + session,
               times=times[session])


def preprocess(clicks: Clicks, name: str, benchmark: Benchmark, *, min_item_count: int = 5,
               valid_size: int | float = 0, seed: int = 0, source: dict[str, Any] | None = None) -> ProcessedDataset:
  """The official preprocessing of `benchmark` (module docstring) as a processed dataset.

  Args:
    clicks: the raw log (`read_clicks` / `load`).
    name: dataset name stored in `dataset.json`.
    benchmark: one of `DATASETS`.
    min_item_count: drop items seen fewer times (the scripts: 5).
    valid_size: validation samples drawn at random (seeded) from the training samples: an int count or a fraction;
      0 (the scripts) -> empty.
    seed: the validation draw's seed.
    source: extra provenance for `ProcessedDataset.source`.

  Raises:
    RawDataError: no training or test session is left (naming the file and the counts).
    PreprocessError: a `valid_size` that is not below the number of training samples.
  """
  where = clicks.files.get("clicks", {}).get("file", name)
  # 1. Sessions by first appearance; a session's date is its last row's; clicks in file (or `within`) order.
  _, first, inverse = np.unique(clicks.keys, return_index=True, return_inverse=True)
  rank = np.empty(len(first), np.int64)
  rank[np.argsort(first, kind="stable")] = np.arange(len(first))
  session = rank[inverse.reshape(-1)]
  num_sessions, num_rows = len(first), len(clicks)
  last_from_end = np.unique(session[::-1], return_index=True)[1]
  session_date = clicks.dates[num_rows - 1 - last_from_end]
  perm = (np.lexsort((clicks.within, session)) if clicks.within is not None
          else np.argsort(session, kind="stable"))
  raw_ids, codes = np.unique(clicks.items, return_inverse=True)
  codes = codes.reshape(-1)[perm]
  lengths = np.bincount(session, minlength=num_sessions)

  # 2. Filters: length-1 sessions, rare items, sessions left shorter than 2 (or longer than the maximum).
  keep = preprocess_lib.filter_sessions(codes, offsets_from_counts(lengths), min_item_count)
  of_click = np.repeat(np.arange(num_sessions), lengths)
  left = np.bincount(of_click[keep], minlength=num_sessions)
  alive = left >= 2
  if benchmark.max_session_length is not None:
    alive &= left <= benchmark.max_session_length
  keep &= alive[of_click]
  kept_codes, kept_lengths = codes[keep], np.where(alive, left, 0)
  kept_offsets = offsets_from_counts(kept_lengths)
  if not alive.any():
    raise raw_lib.RawDataError(f"{where}: no session of length >= 2 is left after the reference filters "
                               f"({num_rows} rows, {num_sessions} sessions, items seen < {min_item_count} times "
                               "dropped)")

  # 3. Date split; each side ordered by date (stable: ties keep first-appearance order).
  max_date = float(session_date[alive].max())
  split_date = max_date - benchmark.test_window
  by_date = lambda mask: np.flatnonzero(mask)[np.argsort(session_date[mask], kind="stable")]
  train, test = by_date(alive & (session_date < split_date)), by_date(alive & (session_date > split_date))
  if not len(train):
    raise raw_lib.RawDataError(f"{where}: no training session: all {int(alive.sum())} sessions left after the "
                               f"filters are dated within {benchmark.test_window:g} of the last date")

  # 4. Item ids by first appearance in the training sessions; test keeps known items, sessions of length >= 2.
  gather, train_offsets = ragged_take(kept_offsets[:-1][train], kept_lengths[train])
  train_codes = kept_codes[gather]
  codes_seen, first_seen = np.unique(train_codes, return_index=True)
  by_first = codes_seen[np.argsort(first_seen)]
  new_id = np.zeros(len(raw_ids), np.int64)
  new_id[by_first] = np.arange(1, len(by_first) + 1)
  train_seqs = new_id[train_codes]
  gather, _ = ragged_take(kept_offsets[:-1][test], kept_lengths[test])
  test_ids = new_id[kept_codes[gather]]
  of_test = np.repeat(np.arange(len(test)), kept_lengths[test])
  known = test_ids > 0
  test_lengths = np.bincount(of_test[known], minlength=len(test))
  long_enough = test_lengths >= 2
  test_seqs = test_ids[known & long_enough[of_test]]
  test_offsets = offsets_from_counts(test_lengths[long_enough])
  if not long_enough.any():
    raise raw_lib.RawDataError(f"{where}: no test session: {len(test)} sessions are dated after the split date "
                               f"{split_date:g}, none keeps 2 clicks on training items")

  # 5. Samples, longest prefix first; 6. the most recent 1/fraction of the training samples.
  times = np.floor(session_date).astype(np.int64)
  splits = {"train": _samples(train_seqs, train_offsets, 0, times[train]),
            "test": _samples(test_seqs, test_offsets, len(train), times[test[long_enough]])}
  full_train = len(splits["train"])
  if benchmark.train_fraction:
    kept = full_train // benchmark.train_fraction
    if not kept:
      raise raw_lib.RawDataError(f"{where}: {full_train} training samples; 1/{benchmark.train_fraction} of them "
                                 "is none")
    splits["train"] = splits["train"].subset(np.arange(full_train - kept, full_train))
  count = preprocess_lib.resolve_size(valid_size, len(splits["train"]), "valid_size")
  held = np.sort(np.random.default_rng(seed).permutation(len(splits["train"]))[:count])
  splits["valid"] = splits["train"].subset(held)
  splits["train"] = splits["train"].subset(np.setdiff1d(np.arange(len(splits["train"])), held))

  item_raw_ids = raw_ids[by_first].tolist()
  clicks_total = len(train_seqs) + len(test_seqs)
  sessions_total = len(train) + int(long_enough.sum())
  protocol = {"protocol": "reference", "reference": benchmark.script, "min_item_count": min_item_count,
              "min_session_length": 2, "max_session_length": benchmark.max_session_length,
              "max_session_id": benchmark.max_session_id, "test_window": benchmark.test_window,
              "train_fraction": benchmark.train_fraction, "valid_size": valid_size,
              "seed": seed if count else None, "dates": "UTC",
              "item_ids": "1..n by first appearance in the date-ordered training sessions"}
  extra_stats = {
      # The script's "avg length": clicks of the (full) training sessions and the test sessions per session.
      "clicks": clicks_total, "sessions": sessions_total, "avg_session_length": clicks_total / sessions_total,
      "max_session_length": int(max(np.diff(train_offsets).max(), np.diff(test_offsets).max())),
      "train_sessions": len(train), "test_sessions": int(long_enough.sum()), "full_train_samples": full_train,
      "max_date": max_date, "split_date": split_date,
      "sessions_on_split_date": int((alive & (session_date == split_date)).sum()),
      "test_items_removed": int((~known).sum()), "test_sessions_dropped": int((~long_enough).sum()),
      "raw_rows": num_rows, "raw_stopped_at_line": clicks.stopped_at_line, "raw_sessions": num_sessions,
      "raw_items": len(raw_ids), "official_n_node_full_dataset": benchmark.n_node}
  return ProcessedDataset(
      name=name, item_names=[PAD_NAME] + [raw_lib.item_name({}, r) for r in item_raw_ids],
      raw_item_ids=[""] + item_raw_ids, splits=splits, protocol=protocol,
      source={**(source or {}), "files": clicks.files}, extra_stats=extra_stats)
