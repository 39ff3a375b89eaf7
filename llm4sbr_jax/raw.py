"""Raw interaction logs: parsers for the paper's datasets and for users' own data, plus a checksummed downloader.

Every parser returns a `RawData`: plain numpy arrays of interactions (the user-or-session key, the raw item id, the
unix timestamp and the original line order) plus a dict from raw item id to item name. Problems in the input raise
`RawDataError` (a `ValueError`) naming the file, the line, the field and what was expected.

Supported inputs:

* MovieLens-1M: `ratings.dat` (`UserID::MovieID::Rating::Timestamp`) and `movies.dat` (`MovieID::Title::Genres`),
  latin-1, from the official `ml-1m.zip`.
* MovieLens-100K: `u.data` (tab-separated `user item rating timestamp`) and `u.item` (`|`-separated, latin-1),
  from the official `ml-100k.zip`.
* Amazon 2014 5-core: `reviews_<Cat>_5.json.gz` (strict JSON lines; only `reviewerID`, `asin`, `unixReviewTime`
  are read) and `meta_<Cat>.json.gz` (Python dict literals, read with `ast.literal_eval`).
* Generic: a TSV `session_or_user_id<TAB>item_id<TAB>timestamp` and optionally a TSV `item_id<TAB>name`, each with
  an optional header line (see `read_generic_interactions`).
* RecBole atomic files: a `.inter` file with a typed header (`session_id:token` or `user_id:token`, `item_id:token`,
  `timestamp:float`, in any order, other columns ignored) and optionally a `.item` file naming the items (see
  `read_recbole`).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import gzip
import hashlib
import itertools
import json
import logging
import math
import os
import re
import urllib.request
import zipfile
import zlib
from typing import Any, Callable, Iterator

import numpy as np

ML_1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML_100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
AMAZON_2014_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
ARCHIVE_MD5 = {ML_1M_URL: "c4d9eecfca2ab87c1945afe126590906"}  # ml-100k: u.data's md5 is checked instead
DATASETS = ("beauty", "ml-1m", "ml-100k")
GENERIC_COLUMNS = {"session_id": "key", "user_id": "key", "item_id": "item", "timestamp": "time"}
GENERIC_ITEM_COLUMNS = ("item_id", "name")
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
RECBOLE_TEXT_TYPES = ("token", "token_seq")
TIMESTAMP_UNITS = ("auto", "s", "ms")
# `auto` reads a file's timestamps as milliseconds when the largest one reaches this: 1e11 s is the year 5138,
# 1e11 ms is March 1973, so only millisecond logs from before 1973 are misread (pass the unit then).
MS_THRESHOLD = 1e11

_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


class RawDataError(ValueError):
  """A raw input file is missing, corrupt, malformed or fails its checksum."""


@dataclasses.dataclass(frozen=True)
class RawData:
  """An interaction log as parallel arrays (one entry per interaction, in file order)."""

  keys: np.ndarray  # str [M]   user or session key
  items: np.ndarray  # str [M]  raw item id
  times: np.ndarray  # int64 [M] unix seconds
  # int64 [M] breaks timestamp ties: the position in the original file (with sub-second timestamps, the rank by
  # exact time, then file position)
  order: np.ndarray
  names: dict[str, str]  # raw item id -> name (may miss items; see `item_name`)
  files: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # role -> file name, checksums
  sessions_given: bool = False  # keys are session ids: each is one session, never split at gaps

  def __len__(self) -> int:
    return int(self.times.shape[0])


@dataclasses.dataclass(frozen=True)
class RawFile:
  """One raw file of a dataset: where it comes from and its published checksum, if any."""

  name: str  # local file name
  url: str  # the file itself, or the zip archive holding it
  member: str | None = None  # path inside the zip archive
  md5: str | None = None  # published md5 of the file itself


def item_name(names: dict[str, str], raw_id: str) -> str:
  """The item's name, or `Item <raw_id>` when the metadata has none (some Amazon items lack a title)."""
  name = names.get(raw_id, "").strip()
  return name or f"Item {raw_id}"


def amazon_files(category: str) -> dict[str, RawFile]:
  """The Amazon 2014 5-core reviews and metadata of one category (e.g. `Beauty`); no published checksums."""
  reviews, meta = f"reviews_{category}_5.json.gz", f"meta_{category}.json.gz"
  return {"reviews": RawFile(reviews, AMAZON_2014_URL + reviews), "meta": RawFile(meta, AMAZON_2014_URL + meta)}


def dataset_files(dataset: str) -> dict[str, RawFile]:
  """The raw files of one of `DATASETS`, by role."""
  if dataset == "beauty":
    return amazon_files("Beauty")
  if dataset == "ml-1m":
    return {"ratings": RawFile("ratings.dat", ML_1M_URL, "ml-1m/ratings.dat"),
            "movies": RawFile("movies.dat", ML_1M_URL, "ml-1m/movies.dat", md5="ef9fd9ff8d1b33faf73e2122c371e910")}
  if dataset == "ml-100k":
    return {"ratings": RawFile("u.data", ML_100K_URL, "ml-100k/u.data", md5="6e47046882bad158b0efbb84cd5cb987"),
            "items": RawFile("u.item", ML_100K_URL, "ml-100k/u.item")}
  raise RawDataError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


# ----------------------------------------------------------------------------------------------------------------
# Checksums and download


def file_digest(path: str, algorithm: str) -> str:
  """Hex digest of a file (streamed)."""
  h = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def verify_md5(path: str, expected: str | None, label: str | None = None) -> str:
  """Returns the file's md5; raises `RawDataError` naming the file and both digests if it differs from `expected`."""
  actual = file_digest(path, "md5")
  if expected is not None and actual != expected:
    raise RawDataError(f"{label or path}: md5 checksum mismatch: expected {expected}, got {actual}; the file is "
                       "corrupt, truncated or not the official one (delete it to download it again)")
  return actual


def file_record(path: str, spec: RawFile) -> dict[str, Any]:
  """Checks a local raw file against its published md5 (if any) and describes it for `ProcessedDataset.source`."""
  md5 = verify_md5(path, spec.md5)
  record = {"file": spec.name, "url": spec.url, "md5": md5, "sha256": file_digest(path, "sha256")}
  if spec.member:
    record["archive_member"] = spec.member
  if spec.md5:
    record["checksum"] = "md5 verified against the published value"
  else:
    record["checksum"] = "no published checksum; sha256 recorded, not verified"
    logging.info("%s has no published checksum; recorded sha256 %s", path, record["sha256"])
  return record


def download(url: str, dest: str, md5: str | None = None, progress: bool = True) -> str:
  """Downloads `url` to `dest` (through `dest.part`, renamed once complete and verified) with a tqdm progress bar."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
  tmp = dest + ".part"
  try:
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
      size = int(response.headers.get("Content-Length") or 0) or None
      with tqdm(total=size, unit="B", unit_scale=True, desc=os.path.basename(dest), disable=not progress) as bar:
        for chunk in iter(lambda: response.read(1 << 20), b""):
          f.write(chunk)
          bar.update(len(chunk))
    verify_md5(tmp, md5, label=f"{url} (downloaded to {tmp})")
  except (OSError, RawDataError) as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, RawDataError):
      raise
    raise RawDataError(f"{url}: download failed ({e}); expected to write {dest}") from e
  os.replace(tmp, dest)
  return dest


def _extract(archive: str, member: str, dest: str) -> None:
  try:
    with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
      for chunk in iter(lambda: src.read(1 << 20), b""):
        out.write(chunk)
  except KeyError as e:
    raise RawDataError(f"{archive}: no member {member!r}; expected the official archive layout") from e
  except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
    raise RawDataError(f"{archive}: corrupt zip archive ({e}); expected a complete zip file") from e
  os.replace(dest + ".part", dest)


def fetch(dataset: str, raw_dir: str | None = None, cache_dir: str | None = None,
          progress: bool = True) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
  """Locates (or downloads) and checks the raw files of a dataset.

  Args:
    dataset: one of `DATASETS`.
    raw_dir: a directory already holding the files (e.g. `../shared/data/beauty`); nothing is downloaded.
    cache_dir: where to download missing files (default `data/raw/<dataset>`); files already there are reused.
    progress: show tqdm progress bars while downloading.

  Returns:
    (paths by role, source records by role). Files with a published md5 are verified; the others get their sha256
    recorded.
  """
  specs = dataset_files(dataset)
  directory = raw_dir or cache_dir or os.path.join("data", "raw", dataset)
  paths = {role: os.path.join(directory, spec.name) for role, spec in specs.items()}
  for role, spec in specs.items():
    path = paths[role]
    if os.path.isfile(path):
      continue
    if raw_dir is not None:
      raise RawDataError(f"{path}: file not found; expected the official {spec.name} of {dataset} in --raw_dir "
                         f"(from {spec.url}), or leave --raw_dir unset to download it")
    if spec.member is None:
      download(spec.url, path, progress=progress)
      continue
    archive = os.path.join(directory, os.path.basename(spec.url))
    if not os.path.isfile(archive):
      download(spec.url, archive, ARCHIVE_MD5.get(spec.url), progress=progress)
    _extract(archive, spec.member, path)
  return paths, {role: file_record(paths[role], spec) for role, spec in specs.items()}


def load(dataset: str, raw_dir: str | None = None, cache_dir: str | None = None, progress: bool = True) -> RawData:
  """Fetches (see `fetch`) and parses one of `DATASETS`."""
  paths, records = fetch(dataset, raw_dir, cache_dir, progress)
  if dataset == "beauty":
    data = read_amazon(paths["reviews"], paths["meta"])
  elif dataset == "ml-1m":
    data = read_movielens_1m(paths["ratings"], paths["movies"])
  else:
    data = read_movielens_100k(paths["ratings"], paths["items"])
  return dataclasses.replace(data, files=records)


# ----------------------------------------------------------------------------------------------------------------
# Line readers


def _lines(path: str, what: str, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, line without newline) of a text or `.gz` file, skipping blank lines."""
  if not os.path.isfile(path):
    raise RawDataError(f"{path}: file not found; expected {what}")
  opener = gzip.open if path.endswith(".gz") else open
  number = 0
  try:
    with opener(path, "rt", encoding=encoding) as f:
      for number, line in enumerate(f, 1):
        line = line.rstrip("\r\n")
        if line.strip():
          yield number, line
  except UnicodeDecodeError as e:
    raise RawDataError(f"{path}: line {number + 1}: not valid {encoding} text ({e}); expected {what}") from e
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
    raise RawDataError(f"{path}: corrupt or truncated gzip data after line {number} ({e}); "
                       f"expected a complete gzip file holding {what}") from e


def _timestamp(value: Any, path: str, number: int, field: str) -> int:
  """Parses an integer unix timestamp (a JSON int or a decimal string), raising a located error otherwise."""
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
    return int(value)
  raise RawDataError(f"{path}: line {number}: field '{field}': expected an integer unix timestamp, got {value!r}")


def _fields(line: str, sep: str, columns: tuple[str, ...], path: str, number: int, quoted: bool = False) -> list[str]:
  """Splits a line into exactly `len(columns)` fields; `quoted`: a field may be double-quoted, as pandas (and so
  RecBole) reads it."""
  if quoted and '"' in line:
    try:
      fields = next(csv.reader([line], delimiter=sep, strict=True))
    except csv.Error as e:
      raise RawDataError(f"{path}: line {number}: malformed quoting ({e}); expected a double-quoted field to end "
                         "at its closing quote, inner quotes doubled (pandas' reading, which RecBole uses)") from None
  else:
    fields = line.split(sep)
  if len(fields) != len(columns):
    raise RawDataError(f"{path}: line {number}: expected {len(columns)} {sep!r}-separated columns "
                       f"({', '.join(columns)}), got {len(fields)}")
  return fields


def _interactions(rows: list[tuple[str, str, int]]) -> RawData:
  keys, items, times = zip(*rows) if rows else ((), (), ())
  return RawData(keys=np.asarray(keys, dtype=str), items=np.asarray(items, dtype=str),
                 times=np.asarray(times, dtype=np.int64), order=np.arange(len(rows), dtype=np.int64), names={})


def _read_delimited(path: str, what: str, sep: str, columns: tuple[str, ...], encoding: str,
                    row: Callable[[list[str], int], Any]) -> list[Any]:
  """Parses every line into `columns` and maps it through `row(fields, line_number)`."""
  return [row(_fields(line, sep, columns, path, number), number) for number, line in _lines(path, what, encoding)]


def _read_movielens(ratings: str, movies: str, sep: str, rating_columns: tuple[str, ...], what: str,
                    movie_columns: tuple[str, ...], movie_sep: str, movie_what: str) -> RawData:
  """MovieLens ratings (user, movie, rating, timestamp) and the movie id -> title table."""
  rows = _read_delimited(
      ratings, what, sep, rating_columns, "latin-1",
      lambda f, n: (f[0], f[1], _timestamp(f[3], ratings, n, rating_columns[3])))
  titles = _read_delimited(movies, movie_what, movie_sep, movie_columns, "latin-1", lambda f, n: (f[0], f[1]))
  return dataclasses.replace(_interactions(rows), names=dict(titles))


def read_movielens_1m(ratings: str, movies: str) -> RawData:
  """MovieLens-1M `ratings.dat` and `movies.dat` (`::`-separated, latin-1)."""
  return _read_movielens(
      ratings, movies, "::", ("UserID", "MovieID", "Rating", "Timestamp"),
      "MovieLens-1M ratings.dat lines UserID::MovieID::Rating::Timestamp",
      ("MovieID", "Title", "Genres"), "::", "MovieLens-1M movies.dat lines MovieID::Title::Genres")


def read_movielens_100k(ratings: str, items: str) -> RawData:
  """MovieLens-100K `u.data` (tab-separated) and `u.item` (`|`-separated, 24 columns, latin-1)."""
  genres = tuple(f"genre_{i}" for i in range(19))
  return _read_movielens(
      ratings, items, "\t", ("user_id", "item_id", "rating", "timestamp"),
      "MovieLens-100K u.data lines user_id<TAB>item_id<TAB>rating<TAB>timestamp",
      ("movie_id", "title", "release_date", "video_release_date", "imdb_url") + genres, "|",
      "MovieLens-100K u.item lines movie_id|title|release date|video release date|IMDb URL|19 genre flags")


def read_amazon(reviews: str, meta: str | None = None) -> RawData:
  """Amazon 2014 reviews (`reviewerID` is the session key) and, optionally, the metadata's titles."""
  what = "Amazon 2014 reviews: one JSON object per line with reviewerID, asin, unixReviewTime"
  rows = []
  for number, line in _lines(reviews, what):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise RawDataError(f"{reviews}: line {number}: invalid JSON ({e.msg} at column {e.colno}); "
                         f"expected {what}") from None
    if not isinstance(record, dict):
      raise RawDataError(f"{reviews}: line {number}: expected a JSON object, got {type(record).__name__}")
    for field in ("reviewerID", "asin", "unixReviewTime"):
      if field not in record:
        raise RawDataError(f"{reviews}: line {number}: missing field '{field}'; expected {what}")
    rows.append((str(record["reviewerID"]), str(record["asin"]),
                 _timestamp(record["unixReviewTime"], reviews, number, "unixReviewTime")))
  data = _interactions(rows)
  return dataclasses.replace(data, names=read_amazon_titles(meta, set(data.items.tolist())) if meta else {})


def read_amazon_titles(meta: str, wanted: set[str] | None = None) -> dict[str, str]:
  """asin -> title from an Amazon 2014 metadata file (Python dict literals; items without a title are left out).

  Lines whose asin is not in `wanted` are skipped before `ast.literal_eval`, which keeps the full ~259k-line
  category metadata fast to scan.
  """
  what = "Amazon 2014 metadata: one Python dict literal per line with 'asin' (and usually 'title')"
  titles = {}
  for number, line in _lines(meta, what):
    match = _ASIN.search(line)
    if wanted is not None and match is not None and match.group(1) not in wanted:
      continue
    try:
      record = ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
      raise RawDataError(f"{meta}: line {number}: not a Python literal ({type(e).__name__}); expected {what}") from None
    if not isinstance(record, dict) or "asin" not in record:
      raise RawDataError(f"{meta}: line {number}: missing field 'asin'; expected {what}")
    if record.get("title"):
      titles[str(record["asin"])] = str(record["title"])
  return titles


def read_generic_interactions(path: str) -> RawData:
  """A TSV `session_or_user_id<TAB>item_id<TAB>timestamp` (unix seconds, integer).

  An optional first line names the columns, in any order: one of `session_id`/`user_id`, `item_id` and `timestamp`.
  The first line counts as a header when it holds any of these names.
  """
  what = "a TSV session_or_user_id<TAB>item_id<TAB>timestamp (optional header session_id|user_id, item_id, timestamp)"
  lines = _lines(path, what)
  first = next(lines, None)
  if first is None:
    raise RawDataError(f"{path}: no interactions; expected {what}")
  columns = first[1].split("\t")
  if set(columns) & set(GENERIC_COLUMNS):
    unknown = [c for c in columns if c not in GENERIC_COLUMNS]
    if unknown:
      raise RawDataError(f"{path}: line {first[0]}: unknown column {unknown[0]!r} in the header; expected the "
                         f"columns {sorted(GENERIC_COLUMNS)} (one key column, item_id, timestamp)")
    roles = [GENERIC_COLUMNS[c] for c in columns]
    if sorted(roles) != ["item", "key", "time"]:
      raise RawDataError(f"{path}: line {first[0]}: header {columns} must name exactly one of session_id/user_id, "
                         "item_id and timestamp")
    body = lines
  else:
    columns, roles = ["session_or_user_id", "item_id", "timestamp"], ["key", "item", "time"]
    body = itertools.chain([first], lines)
  key, item, time = (roles.index(r) for r in ("key", "item", "time"))
  rows = []
  for number, line in body:
    fields = _fields(line, "\t", tuple(columns), path, number)
    rows.append((fields[key], fields[item], _timestamp(fields[time], path, number, columns[time])))
  if not rows:
    raise RawDataError(f"{path}: a header but no interactions; expected {what}")
  return _interactions(rows)


def read_generic_names(path: str) -> dict[str, str]:
  """A TSV `item_id<TAB>name`, with an optional header line `item_id<TAB>name`."""
  what = "a TSV item_id<TAB>name (optional header item_id<TAB>name)"
  names = {}
  for index, (number, line) in enumerate(_lines(path, what)):
    fields = _fields(line, "\t", GENERIC_ITEM_COLUMNS, path, number)
    if index or tuple(fields) != GENERIC_ITEM_COLUMNS:
      names[fields[0]] = fields[1]
  return names


def read_generic(interactions: str, names: str | None = None) -> RawData:
  """Users' own data: the interactions TSV, the optional item-name TSV; source records with sha256."""
  data = read_generic_interactions(interactions)
  titles = read_generic_names(names) if names else {}
  files = {"interactions": _local_record(interactions)}
  if names:
    files["names"] = _local_record(names)
  return dataclasses.replace(data, names=titles, files=files)


def _local_record(path: str) -> dict[str, Any]:
  return {"file": os.path.basename(path), "md5": file_digest(path, "md5"), "sha256": file_digest(path, "sha256"),
          "checksum": "user file; sha256 recorded"}


# ----------------------------------------------------------------------------------------------------------------
# RecBole atomic files


@dataclasses.dataclass(frozen=True)
class AtomicFile:
  """An open RecBole atomic file: its typed header and an iterator over its rows (read once)."""

  path: str
  header_line: int  # line number of the header
  types: dict[str, str]  # field name -> RecBole type, in header order
  rows: Iterator[tuple[int, list[str]]]  # (line number, one field per header column)

  def header(self) -> str:
    return "\t".join(f"{name}:{ftype}" for name, ftype in self.types.items())

  def require(self, field: str, types: tuple[str, ...], what: str) -> None:
    """Raises a located error unless the header has `field` with one of `types`."""
    if field not in self.types:
      raise RawDataError(f"{self.path}: line {self.header_line}: missing required field '{field}' in the header "
                         f"({self.header()}); expected {what}")
    if self.types[field] not in types:
      raise RawDataError(f"{self.path}: line {self.header_line}: field '{field}' has type "
                         f"{self.types[field]!r}; expected {' or '.join(types)}")


def read_atomic(path: str, what: str = "a RecBole atomic file (tab-separated, typed header name:type)") -> AtomicFile:
  """Opens a RecBole atomic file (`.inter`, `.item`, ...) as RecBole reads it.

  The first line is the header: tab-separated `name:type` with type one of `RECBOLE_TYPES`. Every other line holds
  one tab-separated field per header column; a field may be double-quoted (pandas' reading, which RecBole uses).
  `token_seq` and `float_seq` values are space-separated; they are returned as the raw field text.
  """
  lines = _lines(path, what)
  first = next(lines, None)
  if first is None:
    raise RawDataError(f"{path}: empty file; expected {what}")
  number, header = first
  types: dict[str, str] = {}
  for column in header.split("\t"):
    name, colon, ftype = column.partition(":")
    if not colon or not name or ftype not in RECBOLE_TYPES:
      raise RawDataError(f"{path}: line {number}: header column {column!r}: expected name:type with type one of "
                         f"{', '.join(RECBOLE_TYPES)} (a RecBole atomic header, e.g. item_id:token); expected {what}")
    if name in types:
      raise RawDataError(f"{path}: line {number}: field '{name}' appears twice in the header")
    types[name] = ftype
  columns = tuple(f"{name}:{ftype}" for name, ftype in types.items())
  rows = ((n, _fields(line, "\t", columns, path, n, quoted=True)) for n, line in lines)
  return AtomicFile(path=path, header_line=number, types=types, rows=rows)


def _non_empty(value: str, path: str, number: int, field: str) -> str:
  if not value.strip():
    raise RawDataError(f"{path}: line {number}: field '{field}' is empty; expected a token")
  return value


def _number(value: str, path: str, number: int, field: str) -> float:
  try:
    result = float(value)
  except ValueError:
    result = math.nan
  if not math.isfinite(result):
    raise RawDataError(f"{path}: line {number}: field '{field}': expected a number (unix time in seconds or "
                       f"milliseconds), got {value!r}")
  return result


def timestamp_unit(times: np.ndarray, unit: str) -> str:
  """`s` or `ms`: `unit` itself, or for `auto` ms when the largest absolute timestamp reaches `MS_THRESHOLD`."""
  if unit not in TIMESTAMP_UNITS:
    raise RawDataError(f"timestamp unit: expected one of {TIMESTAMP_UNITS}, got {unit!r}")
  if unit != "auto":
    return unit
  return "ms" if len(times) and float(np.max(np.abs(times))) >= MS_THRESHOLD else "s"


def read_recbole_interactions(path: str, unit: str = "auto") -> RawData:
  """A RecBole `.inter` file: one interaction per row, keyed by `session_id` (a session dataset: each id is one
  session) or else `user_id` (a user dataset, sessionised later by a gap).

  Args:
    path: the `.inter` file.
    unit: `s`, `ms` or `auto` (see `timestamp_unit`). Timestamps are stored as whole unix seconds; the exact value
      (milliseconds, fractions) still orders clicks within a second (`RawData.order`).
  """
  what = ("a RecBole atomic .inter file: a tab-separated typed header with item_id:token, session_id:token or "
          "user_id:token, and timestamp:float (any order, other columns ignored), then one interaction per line")
  atomic = read_atomic(path, what)
  key = "session_id" if "session_id" in atomic.types else "user_id"
  if key not in atomic.types:
    raise RawDataError(f"{path}: line {atomic.header_line}: missing required field 'session_id' or 'user_id' in "
                       f"the header ({atomic.header()}); expected {what}")
  for field, types in ((key, ("token",)), ("item_id", ("token",)), ("timestamp", ("float",))):
    atomic.require(field, types, what)
  index = {name: i for i, name in enumerate(atomic.types)}
  k, i, t = index[key], index["item_id"], index["timestamp"]
  keys, items, times = [], [], []
  for number, fields in atomic.rows:
    keys.append(_non_empty(fields[k], path, number, key))
    items.append(_non_empty(fields[i], path, number, "item_id"))
    times.append(_number(fields[t], path, number, "timestamp"))
  if not times:
    raise RawDataError(f"{path}: a header but no interactions; expected {what}")
  exact = np.asarray(times, np.float64)
  chosen = timestamp_unit(exact, unit)
  seconds = np.floor(exact / 1000 if chosen == "ms" else exact).astype(np.int64)
  order = np.empty(len(exact), np.int64)
  order[np.lexsort((np.arange(len(exact)), exact))] = np.arange(len(exact))
  record = {**_local_record(path), "key_field": key, "timestamp_unit": chosen,
            "timestamp_unit_rule": "given" if unit != "auto" else f"auto (ms when max |t| >= {MS_THRESHOLD:.0e})"}
  return RawData(keys=np.asarray(keys, dtype=str), items=np.asarray(items, dtype=str), times=seconds, order=order,
                 names={}, files={"inter": record}, sessions_given=key == "session_id")


def read_recbole_names(path: str, name_field: str | None = None) -> tuple[dict[str, str], str]:
  """Item names from a RecBole `.item` file.

  Args:
    path: the `.item` file (typed header with `item_id:token`).
    name_field: the column holding the names (`title`, `name`, `movie_title`, ...), a token or token_seq column;
      None: the first such column other than `item_id`. A token_seq value (space-separated words) is the name as is.

  Returns:
    (raw item id -> name, the column read).
  """
  what = "a RecBole atomic .item file: a tab-separated typed header with item_id:token and a name column"
  atomic = read_atomic(path, what)
  atomic.require("item_id", ("token",), what)
  if name_field is None:
    text = [n for n, ftype in atomic.types.items() if n != "item_id" and ftype in RECBOLE_TEXT_TYPES]
    if not text:
      raise RawDataError(f"{path}: line {atomic.header_line}: no text column (token or token_seq) besides item_id "
                         f"in the header ({atomic.header()}); expected a name column such as title:token_seq")
    name_field = text[0]
  elif name_field not in atomic.types:
    raise RawDataError(f"{path}: line {atomic.header_line}: no column '{name_field}' in the header "
                       f"({atomic.header()}); expected the item-name column that was asked for")
  atomic.require(name_field, RECBOLE_TEXT_TYPES, what)
  index = {name: i for i, name in enumerate(atomic.types)}
  i, n = index["item_id"], index[name_field]
  return {_non_empty(f[i], path, number, "item_id"): f[n] for number, f in atomic.rows}, name_field


def read_recbole(inter: str, item: str | None = None, item_name_field: str | None = None,
                 unit: str = "auto") -> RawData:
  """A RecBole `.inter` file and, optionally, its `.item` file's names; source records with sha256."""
  data = read_recbole_interactions(inter, unit)
  if item is None:
    return data
  names, field = read_recbole_names(item, item_name_field)
  return dataclasses.replace(data, names=names, files={**data.files, "item": {**_local_record(item),
                                                                                 "name_field": field}})
