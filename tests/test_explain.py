"""The explain report: session items, each perspective's answer, top-f localized items; answer statistics."""

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
