"""Raw parsers, error messages, checksums and the downloader (synthetic files; real data when ../shared/data exists)."""

import gzip
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from llm4sbr_jax import preprocess, raw

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (real raw data) is absent")


def _write(path: Path, text: str, encoding: str = "utf-8") -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".gz":
    with gzip.open(path, "wt", encoding=encoding) as f:
      f.write(text)
  else:
    path.write_bytes(text.encode(encoding))
  return str(path)


def _md5(path) -> str:
  return hashlib.md5(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Parsers


def test_movielens_1m_parses_ratings_and_latin1_titles(tmp_path):
  ratings = _write(tmp_path / "ratings.dat", "2::73::5::978300760\n1::1::3::978300000\n1::73::4::978300000\n")
  movies = _write(tmp_path / "movies.dat", "1::Toy Story (1995)::Animation\n73::Misérables, Les (1995)::Drama\n",
                  encoding="latin-1")
  data = raw.read_movielens_1m(ratings, movies)
  assert data.keys.tolist() == ["2", "1", "1"]
  assert data.items.tolist() == ["73", "1", "73"]
  assert data.times.tolist() == [978300760, 978300000, 978300000]
  assert data.order.tolist() == [0, 1, 2]
  assert data.names == {"1": "Toy Story (1995)", "73": "Misérables, Les (1995)"}


def test_movielens_100k_parses_tab_and_pipe_files(tmp_path):
  ratings = _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
  flags = "|".join("0" * 19)
  items = _write(tmp_path / "u.item", f"242|Kolya (1996)|24-Jan-1997||http://x|{flags}\n"
                 f"302|L.A. Confidential (1997)|01-Jan-1997||http://y|{flags}\n", encoding="latin-1")
  data = raw.read_movielens_100k(ratings, items)
  assert data.items.tolist() == ["242", "302"] and data.times.dtype == np.int64
  assert data.names["302"] == "L.A. Confidential (1997)"


def test_amazon_reads_only_needed_fields_and_falls_back_for_missing_titles(tmp_path):
  lines = [{"reviewerID": "U1", "asin": "A", "unixReviewTime": 100, "overall": 5.0, "reviewText": "nice"},
           {"reviewerID": "U1", "asin": "B", "unixReviewTime": 200}]
  reviews = _write(tmp_path / "reviews_Cat_5.json.gz", "".join(json.dumps(x) + "\n" for x in lines))
  meta = _write(tmp_path / "meta_Cat.json.gz",
                "{'asin': 'A', 'title': \"Rose's Cream\", 'salesRank': {'Beauty': 3}}\n{'asin': 'B'}\n"
                "{'asin': 'Z', 'title': 'not reviewed'}\n")
  data = raw.read_amazon(reviews, meta)
  assert data.keys.tolist() == ["U1", "U1"] and data.times.tolist() == [100, 200]
  assert data.names == {"A": "Rose's Cream"}  # B has no title; Z is not in the reviews.
  assert [raw.item_name(data.names, i) for i in ("A", "B")] == ["Rose's Cream", "Item B"]


def test_generic_with_and_without_header(tmp_path):
  plain = _write(tmp_path / "plain.tsv", "s1\ti1\t10\ns1\ti2\t20\n")
  reordered = _write(tmp_path / "header.tsv", "item_id\ttimestamp\tuser_id\ni1\t10\ts1\ni2\t20\ts1\n")
  for path in (plain, reordered):
    data = raw.read_generic_interactions(path)
    assert (data.keys.tolist(), data.items.tolist(), data.times.tolist()) == (["s1", "s1"], ["i1", "i2"], [10, 20])
  names = _write(tmp_path / "names.tsv", "item_id\tname\ni1\tRed shoe\ni2\tBlue hat\n")
  data = raw.read_generic(plain, names)
  assert data.names == {"i1": "Red shoe", "i2": "Blue hat"}
  assert set(data.files) == {"interactions", "names"} and data.files["names"]["md5"] == _md5(names)


# ---------------------------------------------------------------------------------------------------------------
# Errors name the file, the line, the field and what was expected


def _raises(match_parts, fn, *args):
  with pytest.raises(raw.RawDataError) as e:
    fn(*args)
  message = str(e.value)
  for part in match_parts:
    assert part in message, f"{part!r} not in {message!r}"
  return message


def test_missing_file(tmp_path):
  path = str(tmp_path / "u.data")
  _raises([path, "file not found", "expected MovieLens-100K u.data"], raw.read_movielens_100k, path, path)


def test_missing_file_in_raw_dir_names_the_official_file(tmp_path):
  _raises([str(tmp_path / "reviews_Beauty_5.json.gz"), "expected the official reviews_Beauty_5.json.gz"],
          raw.fetch, "beauty", str(tmp_path))


def test_corrupt_gzip(tmp_path):
  path = tmp_path / "reviews_X_5.json.gz"
  path.write_bytes(b"this is not gzip data\n")
  _raises([str(path), "corrupt or truncated gzip", "expected a complete gzip file"], raw.read_amazon, str(path))


def test_truncated_gzip(tmp_path):
  lines = "".join(json.dumps({"reviewerID": f"U{i}", "asin": f"A{i % 7}", "unixReviewTime": i}) + "\n"
                  for i in range(2000))
  full = _write(tmp_path / "full.json.gz", lines)
  cut = tmp_path / "reviews_X_5.json.gz"
  cut.write_bytes(Path(full).read_bytes()[:-200])
  _raises([str(cut), "truncated gzip", "expected a complete gzip file"], raw.read_amazon, str(cut))


def test_truncated_text_file_wrong_column_count(tmp_path):
  path = _write(tmp_path / "ratings.dat", "1::1::5::978300760\n1::2::4")  # last line cut mid-record
  movies = _write(tmp_path / "movies.dat", "1::A::B\n")
  _raises([path, "line 2", "expected 4 '::'-separated columns (UserID, MovieID, Rating, Timestamp), got 3"],
          raw.read_movielens_1m, path, movies)


def test_bad_json_and_missing_field(tmp_path):
  bad = _write(tmp_path / "bad.json.gz", '{"reviewerID": "U", "asin": "A", "unixReviewTime": 1}\n{"reviewerID": \n')
  _raises([bad, "line 2", "invalid JSON", "expected Amazon 2014 reviews"], raw.read_amazon, bad)
  missing = _write(tmp_path / "missing.json.gz", '{"reviewerID": "U", "unixReviewTime": 1}\n')
  _raises([missing, "line 1", "missing field 'asin'"], raw.read_amazon, missing)


def test_non_integer_timestamp(tmp_path):
  path = _write(tmp_path / "x.tsv", "s\ti\t10\ns\ti\t2021-01-01\n")
  _raises([path, "line 2", "field 'timestamp'", "expected an integer unix timestamp", "'2021-01-01'"],
          raw.read_generic_interactions, path)
  amazon = _write(tmp_path / "r.json.gz", '{"reviewerID": "U", "asin": "A", "unixReviewTime": 1.5}\n')
  _raises([amazon, "line 1", "field 'unixReviewTime'", "expected an integer unix timestamp"], raw.read_amazon, amazon)


def test_unknown_header_column(tmp_path):
  path = _write(tmp_path / "x.tsv", "session_id\titem\ttimestamp\ns\ti\t1\n")
  _raises([path, "line 1", "unknown column 'item'", "item_id"], raw.read_generic_interactions, path)
  duplicate = _write(tmp_path / "y.tsv", "session_id\tuser_id\ttimestamp\ns\ti\t1\n")
  _raises([duplicate, "must name exactly one of session_id/user_id, item_id and timestamp"],
          raw.read_generic_interactions, duplicate)


def test_bad_meta_literal(tmp_path):
  meta = _write(tmp_path / "meta.json.gz", "{'asin': 'A', 'title': 'x'}\n{'asin': 'B', 'title': \n")
  _raises([meta, "line 2", "not a Python literal", "expected Amazon 2014 metadata"], raw.read_amazon_titles, meta)


# ---------------------------------------------------------------------------------------------------------------
# Checksums and downloads (file:// URLs stand in for the official servers)


def test_download_verifies_md5_and_leaves_nothing_on_mismatch(tmp_path):
  src = _write(tmp_path / "src" / "u.data", "1\t2\t3\t4\n")
  dest = str(tmp_path / "out" / "u.data")
  raw.download(Path(src).as_uri(), dest, md5=_md5(src), progress=False)
  assert Path(dest).read_bytes() == Path(src).read_bytes()
  other = str(tmp_path / "out" / "other")
  message = _raises([Path(src).as_uri(), "md5 checksum mismatch", "expected " + "0" * 32, "got " + _md5(src)],
                    raw.download, Path(src).as_uri(), other, "0" * 32, False)
  assert "delete it" in message
  assert not Path(other).exists() and not Path(other + ".part").exists()


def test_fetch_downloads_archive_extracts_members_and_records_checksums(tmp_path, monkeypatch):
  ratings, titles = b"1\t10\t5\t100\n", b"10|A movie|x||y|" + b"|".join([b"0"] * 19) + b"\n"
  archive = tmp_path / "server" / "ml-100k.zip"
  archive.parent.mkdir()
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("ml-100k/u.data", ratings)
    z.writestr("ml-100k/u.item", titles)
  url = archive.as_uri()
  specs = {"ratings": raw.RawFile("u.data", url, "ml-100k/u.data", hashlib.md5(ratings).hexdigest()),
           "items": raw.RawFile("u.item", url, "ml-100k/u.item")}
  monkeypatch.setattr(raw, "dataset_files", lambda dataset: specs)
  cache = tmp_path / "cache"
  data = raw.load("ml-100k", cache_dir=str(cache), progress=False)
  assert (cache / "u.data").read_bytes() == ratings and (cache / "ml-100k.zip").is_file()
  assert data.names == {"10": "A movie"} and data.times.tolist() == [100]
  assert data.files["ratings"]["checksum"].startswith("md5 verified")
  assert data.files["items"]["checksum"].startswith("no published checksum")
  assert data.files["items"]["sha256"] == hashlib.sha256(titles).hexdigest()
  # A cached file that was modified later fails its published checksum.
  (cache / "u.data").write_bytes(b"1\t10\t5\t101\n")
  _raises([str(cache / "u.data"), "md5 checksum mismatch", specs["ratings"].md5], raw.fetch, "ml-100k", None,
          str(cache), False)


# ---------------------------------------------------------------------------------------------------------------
# Real data (skips without ../shared/data)


@needs_shared
def test_ml100k_real_checksum_verified():
  data = raw.load("ml-100k", raw_dir=str(SHARED / "ml-100k"), progress=False)
  assert data.files["ratings"]["md5"] == "6e47046882bad158b0efbb84cd5cb987"
  assert data.files["ratings"]["checksum"].startswith("md5 verified")
  assert len(data) == 100_000 and len(np.unique(data.keys)) == 943 and len(data.names) == 1682


@needs_shared
def test_ml100k_tampered_copy_fails_checksum(tmp_path):
  for name in ("u.data", "u.item"):
    shutil.copy(SHARED / "ml-100k" / name, tmp_path / name)
  with open(tmp_path / "u.data", "ab") as f:
    f.write(b"1\t1\t1\t1\n")
  _raises([str(tmp_path / "u.data"), "md5 checksum mismatch", "expected 6e47046882bad158b0efbb84cd5cb987",
           "got " + _md5(tmp_path / "u.data")], raw.load, "ml-100k", str(tmp_path))


@needs_shared
def test_ml1m_with_official_movies_and_synthetic_ratings(tmp_path):
  shutil.copy(SHARED / "ml-1m" / "movies.dat", tmp_path / "movies.dat")
  # User 1: gaps of 600 s (same session) then 601 s (new session); user 2: one session. The official file is not in
  # time order within a user.
  _write(tmp_path / "ratings.dat", "1::73::5::978300700\n1::1::3::978300100\n1::2::3::978301301\n"
         "1::73::4::978301400\n2::2::4::978000000\n2::1::4::978000300\n")
  data = raw.load("ml-1m", raw_dir=str(tmp_path), progress=False)
  assert data.files["movies"]["md5"] == "ef9fd9ff8d1b33faf73e2122c371e910"
  assert data.names["73"] == "Misérables, Les (1995)" and len(data.names) == 3883
  assert data.files["ratings"]["checksum"].startswith("no published checksum")
  ds = preprocess.preprocess(data, "ml-1m", test_size=0, valid_size=0, session_gap_minutes=10, min_item_count=1)
  ids, train = np.asarray(ds.raw_item_ids), ds.splits["train"]
  assert [(ids[train.prefix(i)].tolist(), ids[train.targets[i]]) for i in range(len(train))] == [
      (["2"], "1"), (["1"], "73"), (["2"], "73")]
  assert ds.item_names[ds.raw_item_ids.index("73")] == "Misérables, Les (1995)"


@needs_shared
def test_beauty_real_counts_and_title_fallback():
  data = raw.load("beauty", raw_dir=str(SHARED / "beauty"), progress=False)
  assert len(data) == 198_502
  assert len(np.unique(data.keys)) == 22_363 and len(np.unique(data.items)) == 12_101
  missing = [i for i in np.unique(data.items) if i not in data.names]
  assert len(missing) == 7 and raw.item_name(data.names, missing[0]) == f"Item {missing[0]}"
  assert all(r["checksum"].startswith("no published checksum") for r in data.files.values())


# ---------------------------------------------------------------------------------------------------------------
# RecBole atomic files


def test_recbole_session_dataset_any_column_order_extra_columns_ignored(tmp_path):
  inter = _write(tmp_path / "x.inter",
                 "timestamp:float\trating:float\titem_id:token\ttags:token_seq\tsession_id:token\n"
                 "20\t5\ti2\ta b\ts1\n10\t4\ti1\t\ts1\n15.5\t3\ti1\tc\ts2\n")
  data = raw.read_recbole(inter)
  assert (data.keys.tolist(), data.items.tolist(), data.times.tolist()) == (["s1", "s1", "s2"], ["i2", "i1", "i1"],
                                                                           [20, 10, 15])
  assert data.sessions_given and data.names == {} and data.files["inter"]["key_field"] == "session_id"
  assert data.files["inter"]["timestamp_unit"] == "s" and data.files["inter"]["md5"] == _md5(inter)


def test_recbole_user_dataset_milliseconds_keep_sub_second_order(tmp_path):
  # u1's two clicks share a second; the later millisecond comes first in the file.
  inter = _write(tmp_path / "u.inter", "user_id:token\titem_id:token\ttimestamp:float\n"
                 "u1\tB\t1400000000900\nu1\tA\t1400000000100\nu2\tA\t1400000100000\n")
  data = raw.read_recbole(inter)
  assert data.times.tolist() == [1400000000, 1400000000, 1400000100] and not data.sessions_given
  assert data.files["inter"]["timestamp_unit"] == "ms" and data.files["inter"]["key_field"] == "user_id"
  perm, offsets = preprocess.sessionize(data.keys, data.times, data.order)
  assert data.items[perm[offsets[0]:offsets[1]]].tolist() == ["A", "B"]  # by milliseconds, not file order
  # An explicit unit wins over the magnitude rule; `auto` switches to ms at exactly 1e11.
  assert raw.read_recbole(inter, unit="s").times.tolist()[0] == 1400000000900
  assert raw.timestamp_unit(np.array([99_999_999_999.0]), "auto") == "s"
  assert raw.timestamp_unit(np.array([1e11]), "auto") == "ms"


def test_recbole_item_names_default_and_chosen_column(tmp_path):
  item = _write(tmp_path / "x.item", "year:float\titem_id:token\tgenre:token\tmovie_title:token_seq\n"
                "1995\ti1\tDrama\tToy Story\n1996\ti2\tComedy\tHeat\n")
  assert raw.read_recbole_names(item) == ({"i1": "Drama", "i2": "Comedy"}, "genre")  # the first text column
  assert raw.read_recbole_names(item, "movie_title") == ({"i1": "Toy Story", "i2": "Heat"}, "movie_title")
  inter = _write(tmp_path / "x.inter", "session_id:token\titem_id:token\ttimestamp:float\ns\ti1\t1\ns\ti3\t2\n")
  data = raw.read_recbole(inter, item, "movie_title")
  assert data.names["i1"] == "Toy Story" and raw.item_name(data.names, "i3") == "Item i3"
  assert data.files["item"]["name_field"] == "movie_title" and data.files["item"]["md5"] == _md5(item)


def test_recbole_quoted_fields_read_as_pandas_reads_them(tmp_path):
  item = _write(tmp_path / "q.item", 'item_id:token\ttitle:token_seq\ni1\t"""Best"" of\tall"\ni2\tsay "hi"\n')
  assert raw.read_recbole_names(item)[0] == {"i1": '"Best" of\tall', "i2": 'say "hi"'}
  bad = _write(tmp_path / "b.item", 'item_id:token\ttitle:token_seq\ni1\tA\ni2\t"Quoted" Title\n')
  _raises([bad, "line 3", "malformed quoting", "expected a double-quoted field to end at its closing quote"],
          raw.read_recbole_names, bad)


@pytest.mark.parametrize("header, rows, parts", [
    ("session_id:token\ttimestamp:float", "s\t1", ["line 1", "missing required field 'item_id'",
                                                   "(session_id:token\ttimestamp:float)", "expected a RecBole"]),
    ("item_id:token\ttimestamp:float", "i\t1", ["line 1", "missing required field 'session_id' or 'user_id'"]),
    ("user_id:token\titem_id:token", "u\ti", ["line 1", "missing required field 'timestamp'"]),
    ("user_id:token\titem_id:float\ttimestamp:float", "u\t1\t1", ["line 1", "field 'item_id' has type 'float'",
                                                                  "expected token"]),
    ("user_id\titem_id:token\ttimestamp:float", "u\ti\t1", ["line 1", "header column 'user_id'",
                                                          "expected name:type"]),
    ("user_id:str\titem_id:token\ttimestamp:float", "u\ti\t1", ["line 1", "header column 'user_id:str'",
                                                              "token, token_seq, float, float_seq"]),
    ("user_id:token\titem_id:token\titem_id:token", "u\ti\ti", ["line 1", "field 'item_id' appears twice"]),
    ("user_id:token\titem_id:token\ttimestamp:float", "u\ti\t1\nu\ti", [
        "line 3", "expected 3 '\\t'-separated columns (user_id:token, item_id:token, timestamp:float), got 2"]),
    ("user_id:token\titem_id:token\ttimestamp:float", "u\ti\t1\nu\ti\t2021-01-01", [
        "line 3", "field 'timestamp'", "expected a number", "'2021-01-01'"]),
    ("user_id:token\titem_id:token\ttimestamp:float", "u\ti\tnan", ["line 2", "field 'timestamp'"]),
    ("user_id:token\titem_id:token\ttimestamp:float", "u\t \t5", ["line 2", "field 'item_id' is empty"]),
    ("user_id:token\titem_id:token\ttimestamp:float", "", ["a header but no interactions"]),
])
def test_recbole_inter_errors(tmp_path, header, rows, parts):
  path = _write(tmp_path / "bad.inter", header + "\n" + rows + ("\n" if rows else ""))
  _raises([path] + parts, raw.read_recbole, path)


def test_recbole_item_errors(tmp_path):
  item = _write(tmp_path / "x.item", "item_id:token\ttitle:token_seq\tyear:float\ni1\tA\t1990\n")
  _raises([item, "line 1", "no column 'name'", "(item_id:token\ttitle:token_seq\tyear:float)"],
          raw.read_recbole_names, item, "name")
  _raises([item, "line 1", "field 'year' has type 'float'", "expected token or token_seq"],
          raw.read_recbole_names, item, "year")
  numeric = _write(tmp_path / "n.item", "item_id:token\tyear:float\ni1\t1990\n")
  _raises([numeric, "line 1", "no text column", "title:token_seq"], raw.read_recbole_names, numeric)
  no_id = _write(tmp_path / "i.item", "iid:token\ttitle:token_seq\ni1\tA\n")
  _raises([no_id, "missing required field 'item_id'"], raw.read_recbole_names, no_id)
  _raises([str(tmp_path / "none.item"), "file not found", "expected a RecBole atomic .item file"],
          raw.read_recbole_names, str(tmp_path / "none.item"))


def test_generic_header_only_is_an_error(tmp_path):
  path = _write(tmp_path / "h.tsv", "session_id\titem_id\ttimestamp\n")
  _raises([path, "a header but no interactions"], raw.read_generic_interactions, path)
