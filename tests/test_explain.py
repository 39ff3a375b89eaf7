"""The explain report: session items, each perspective's answer, top-f localized items; answer statistics."""

import numpy as np

import stage1_fixtures as fx
from llm4sbr_jax import explain, intents


def test_explain_and_summary(tmp_path):
  ds = fx.tiny_dataset(str(tmp_path / "ds"))
  out = str(tmp_path / "stage1")
  fx.fake_stage1(out, ds)
  s1 = intents.open_stage1(out, ds)
  text = explain.explain(ds, s1, "test", 2, 3)
  assert "[long-term] LLM answer: 'x'" in text and text.count("top-") == 6
  assert ds.item_names[ds.splits["test"].prefix(2)[0]] in text
  assert "exact catalog name: 0 (0.0%)" in explain.summary(ds, s1, "test")


def test_an_answer_naming_an_item_is_shown_as_that_item(tmp_path):
  ds = fx.tiny_dataset(str(tmp_path / "ds"))
  out = str(tmp_path / "stage1")
  fx.fake_stage1(out, ds)
  shards = intents.open_stage1(out, ds).manifest["shards"]
  named = {s["file"]: np.zeros(s["num_rows"], np.int32) for s in shards}
  long_term = next(s for s in shards if s["perspective"] == "long-term" and s["row_start"] <= 2 < s["row_end"])
  named[long_term["file"]][2 - long_term["row_start"]] = 3
  fx.add_named_items(out, named)
  text = explain.explain(ds, intents.open_stage1(out, ds), "test", 2, 3)
  assert f"names item  w=1.000  {ds.item_names[3]} [{ds.raw_item_ids[3]}]" in text
  assert text.count("top-") == 3  # only the short-term answer is localized by similarity
