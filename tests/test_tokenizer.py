"""Tokenizer training: exact round trips (hypothesis), transformers parity, the deterministic
source-balanced sample, byte-identical retraining, up-to-date skips, the report, `inspect`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pretrain.core.config import ConfigError, load_config
from pretrain.core.shards import DOC_SCHEMA, write_manifest, write_table
from pretrain.core.tokenizer_file import load_tokenizer
from tokenizer.config import TokenizerTrainConfig
from tokenizer.sample import allocate, plan_sample
from tokenizer.train import train_tokenizer

REPO = Path(__file__).resolve().parent.parent
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but "
    "data model token shard train loss gradient batch layer attention number value function return "
    "Straße naïve café über 東京 データ 学习 模型 مرحبا привет мир 🙂 👍🏽"
).split()


def synth_docs(source: str, n: int, seed: int, mean_words: int = 60) -> list[dict]:
    """Deterministic multilingual documents with numbers, code-ish lines and whitespace runs."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        k = int(rng.integers(1, 2 * mean_words))
        words = [WORDS[j] for j in rng.integers(0, len(WORDS), size=k)]
        for j in rng.integers(0, k, size=k // 10):
            words[j] = str(int(rng.integers(0, 10**7)))
        text = " ".join(words)
        if i % 7 == 0:
            text += "\n\n    def f(x):\n\treturn x  +  1\r\n"
        docs.append(
            {"id": f"{source}/{i:05d}", "text": text, "source": source, "url": None, "metadata": "{}"}
        )
    return docs


def make_stage(stage_dir: Path, docs: list[dict], num_shards: int) -> Path:
    """A finished stage directory: shards/*.parquet (DOC_SCHEMA) + manifest.json, docs dealt in order."""
    entries = []
    size = -(-len(docs) // num_shards)
    for k in range(num_shards):
        part = docs[k * size : (k + 1) * size]
        table = pa.Table.from_pylist(part, schema=DOC_SCHEMA)
        entries.append(write_table(stage_dir / "shards" / f"part-{k:05d}.parquet", table, DOC_SCHEMA))
    write_manifest(stage_dir, shards=entries, rejects=[])
    return stage_dir


def tiny_cfg(*overrides: str) -> TokenizerTrainConfig:
    return load_config(
        TokenizerTrainConfig, REPO / "configs" / "tokenizer_tiny.yaml", ["vocab_size=600", *overrides]
    )


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return synth_docs("web", 300, 0) + synth_docs("code", 120, 1, mean_words=30) + synth_docs("books", 40, 2)


@pytest.fixture(scope="module")
def stage(tmp_path_factory, docs) -> Path:
    return make_stage(tmp_path_factory.mktemp("stage"), docs, 4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, stage) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tok")
    return out, train_tokenizer(stage, out, tiny_cfg())


@pytest.fixture(scope="module")
def bpe(trained):
    return load_tokenizer(trained[0])


@pytest.fixture(scope="module")
def hf(trained):
    """Our tokenizer directory loaded by transformers, offline."""
    transformers = pytest.importorskip("transformers")
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield transformers.PreTrainedTokenizerFast.from_pretrained(str(trained[0]))
    finally:
        os.environ.pop("HF_HUB_OFFLINE") if old is None else os.environ.__setitem__("HF_HUB_OFFLINE", old)


SAMPLES = [
    "",
    "Hello, world! 12345678901",
    "東京は日本の首都です。数据和模型",
    "👍🏽👨‍👩‍👧‍👦 🏳️‍🌈 \U0001f9d1\u200d\U0001f4bb",
    "\u0301 lone combining mark, e\u0301 vs \u00e9, \ufeffBOM, \u200b zero width",
    "tabs\t\tand    spaces   \n\n\n\r\n trailing   ",
    "\x00\x01\x7f control \U0010ffff \uffff noncharacters",
    "literal <|eos|> and <|bos|><|pad|> inside text",
    "مرحبا بالعالم — RTL \u202e override \u202c",
    "x" * 3000 + " 9" * 500,
]


@settings(max_examples=400, deadline=None)
@given(text=st.text(max_size=300))
@example(text="\u3000\u00a0\u2028\u2029\x0b\x0c \t")
def test_round_trip_is_exact_for_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.sampled_from(SAMPLES) | st.text(alphabet=st.characters(codec="utf-8")), max_size=8))
def test_round_trip_of_mixed_scripts_emoji_and_whitespace(bpe, parts):
    text = "".join(parts)
    assert bpe.decode(bpe.encode(text)) == text


def test_round_trip_of_hand_picked_hard_cases(bpe):
    for s in SAMPLES:
        assert bpe.decode(bpe.encode(s)) == s, s


def test_batch_encode_equals_single_and_specials_are_plain_text(bpe):
    assert bpe.encode_batch(SAMPLES) == [bpe.encode(s) for s in SAMPLES]
    ids = bpe.encode("a<|eos|>b")
    assert bpe.eos_id not in ids and bpe.bos_id not in bpe.encode("<|bos|>")
    assert (bpe.bos_id, bpe.eos_id, bpe.pad_id) == (0, 1, 2)
    assert bpe.decode([bpe.bos_id, *bpe.encode("hi"), bpe.eos_id]) == "<|bos|>hi<|eos|>"


def test_transformers_loads_offline_and_gives_the_same_ids(trained, bpe, hf, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import transformers

    fast = hf
    auto = transformers.AutoTokenizer.from_pretrained(str(trained[0]))
    assert type(auto).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend")
    for hf in (fast, auto):
        assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (bpe.bos_id, bpe.eos_id, bpe.pad_id)
        assert len(hf) == bpe.vocab_size
        for s in SAMPLES:
            assert hf.encode(s, add_special_tokens=False) == bpe.encode(s), s
            assert hf.encode(s) == bpe.encode(s), s  # no BOS/EOS added behind our back
            assert hf.decode(bpe.encode(s)) == s


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200) | st.sampled_from(SAMPLES))
def test_transformers_ids_equal_ours_on_arbitrary_text(bpe, hf, text):
    assert hf.encode(text, add_special_tokens=False) == bpe.encode(text)
    assert hf.decode(bpe.encode(text)) == text


def test_allocate_water_fills_shares():
    assert allocate({"a": 1000, "b": 1000}, {"a": 1, "b": 1}, 600) == {"a": 300, "b": 300}
    assert allocate({"a": 1000, "b": 100}, {"a": 1, "b": 1}, 600) == {"a": 500, "b": 100}
    assert allocate({"a": 1000, "b": 1000, "c": 50}, {"a": 3, "b": 1, "c": 1}, 850) == {
        "a": 600,
        "b": 200,
        "c": 50,
    }
    assert allocate({"a": 10, "b": 20}, {"a": 1, "b": 1}, 10_000) == {"a": 10, "b": 20}
    assert allocate({"a": 1000, "b": 1000}, {"a": 1}, 600) == {"a": 600, "b": 0}


def _drawn(stage_dir: Path, cfg) -> dict[str, tuple[set, set]]:
    from pretrain.core.shards import list_shards

    plan = plan_sample(list_shards(stage_dir), cfg)
    out: dict[str, tuple[set, set]] = {s: (set(), set()) for s in plan.sources}
    for src, text, held in plan.iter_texts():
        out[src][1 if held else 0].add(text)
    return out


def test_sample_is_source_balanced_bounded_and_shard_layout_free(tmp_path, docs):
    budget = 50_000  # books (15 kB) is under a third: it gives all it has, web and code split the rest
    cfg = tiny_cfg(f"sample_bytes={budget}", "heldout_fraction=0.1")
    one = _drawn(make_stage(tmp_path / "one", docs, 1), cfg)
    seven = _drawn(make_stage(tmp_path / "seven", docs[::-1], 7), cfg)  # other order and sharding
    assert one == seven
    nbytes = {s: sum(len(t.encode()) for t in tr | ho) for s, (tr, ho) in one.items()}
    total = {s: sum(len(d["text"].encode()) for d in docs if d["source"] == s) for s in one}
    assert total["books"] < budget / 3  # a small source gives all it has ...
    assert nbytes["books"] == total["books"]
    for s in ("web", "code"):  # ... and the others split the rest
        assert abs(nbytes[s] - (budget - total["books"]) / 2) < 2_000, nbytes
    for tr, ho in one.values():
        assert tr and ho and not tr & ho
    assert sum(nbytes.values()) <= budget + 2 * 3 * 2_000  # at most one document over, per part


def test_larger_budget_draws_a_superset_and_seed_changes_the_draw(stage):
    small = _drawn(stage, tiny_cfg("sample_bytes=15000", "heldout_fraction=0"))
    large = _drawn(stage, tiny_cfg("sample_bytes=30000", "heldout_fraction=0"))
    other = _drawn(stage, tiny_cfg("sample_bytes=15000", "heldout_fraction=0", "seed=1"))
    assert all(small[s][0] <= large[s][0] for s in small)
    assert small["web"][0] != other["web"][0]


def test_source_weights_and_max_doc_bytes(stage):
    drawn = _drawn(stage, tiny_cfg("sample_bytes=12000", "source_weights={web: 1}", "heldout_fraction=0"))
    assert drawn["code"] == (set(), set()) and drawn["books"] == (set(), set())
    capped = _drawn(stage, tiny_cfg("max_doc_bytes=50", "heldout_fraction=0"))
    assert max(len(t.encode()) for tr, _ in capped.values() for t in tr) <= 50


def test_config_errors_name_field_and_range():
    with pytest.raises(ConfigError, match=r"vocab_size=100 .*272"):
        TokenizerTrainConfig(vocab_size=100)
    with pytest.raises(ConfigError, match="heldout_fraction=0.9"):
        TokenizerTrainConfig(heldout_fraction=0.9)
    with pytest.raises(ConfigError, match="unknown config key vocab"):
        load_config(TokenizerTrainConfig, None, ["vocab=3"])


def test_report_and_files(trained, docs):
    out, report = trained
    assert not report["up_to_date"]
    assert {p.name for p in out.iterdir()} >= {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "config.yaml",
        "report.json",
        "report.md",
    }
    assert (
        json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "PreTrainedTokenizerFast"
    )
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["tokenizer_hash"] == load_tokenizer(out).hash == report["tokenizer_hash"]
    assert report["vocab_size"] == 600 and set(report["sources"]) == {"web", "code", "books"}
    for name, s in report["sources"].items():
        n_docs = sum(d["source"] == name for d in docs)
        assert s["corpus_docs"] == n_docs and 0 < s["heldout_docs"] < n_docs
        assert s["sample_docs"] + s["heldout_docs"] == n_docs  # the budget covers the whole corpus
        assert 1.0 < s["bytes_per_token"] < 8.0
    assert report["peak_rss_bytes"] > 10 << 20 and report["seconds"]["train"] > 0
    assert "| web |" in (out / "report.md").read_text()


def test_retrain_is_byte_identical_and_up_to_date_skips(trained, stage, tmp_path):
    out, report = trained
    again = train_tokenizer(stage, tmp_path / "again", tiny_cfg())
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    mtime = (out / "tokenizer.json").stat().st_mtime_ns
    skipped = train_tokenizer(stage, out, tiny_cfg("batch_rows=7"))  # batch_rows changes nothing
    assert skipped["up_to_date"] and skipped["tokenizer_hash"] == again["tokenizer_hash"]
    assert (out / "tokenizer.json").stat().st_mtime_ns == mtime
    assert not train_tokenizer(stage, tmp_path / "again", tiny_cfg("seed=3"))["up_to_date"]


def test_changed_input_or_tampered_tokenizer_retrains(tmp_path, docs):
    stage = make_stage(tmp_path / "stage", docs[:200], 2)
    out = tmp_path / "tok"
    first = train_tokenizer(stage, out, tiny_cfg())
    (out / "tokenizer.json").write_text((out / "tokenizer.json").read_text() + " ")
    assert not train_tokenizer(stage, out, tiny_cfg())["up_to_date"]
    make_stage(stage, docs[:250], 2)
    second = train_tokenizer(stage, out, tiny_cfg())
    assert not second["up_to_date"] and second["input_manifest_sha256"] != first["input_manifest_sha256"]


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        train_tokenizer(tmp_path, tmp_path / "tok", tiny_cfg())


def test_cli_train_skip_and_inspect(trained, stage, capsys):
    from tokenizer.cli import format_tokens, main

    out = trained[0]
    cfg = str(REPO / "configs" / "tokenizer_tiny.yaml")
    assert main(["train", "--input", str(stage), "--out", str(out), "--config", cfg, "vocab_size=600"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["train", "--input", str(stage), "--out", str(out), "vocab_size=7"]) == 2
    assert "vocab_size=7" in capsys.readouterr().err
    bpe = load_tokenizer(out)
    table = format_tokens(bpe, "Straße 東京 <|eos|>")
    lines = table.splitlines()
    ids = bpe.encode("Straße 東京 <|eos|>")
    assert len(lines) == len(ids) + 2 and lines[-1].startswith(f"{len(ids)} tokens, 22 bytes")
    assert [int(line.split()[1]) for line in lines[1:-1]] == ids
    assert b"".join(bpe.token_bytes(i) for i in ids) == "Straße 東京 <|eos|>".encode()
    res = subprocess.run(
        [sys.executable, "-m", "tokenizer", "inspect", "--tokenizer", str(out), "the data"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert res.returncode == 0 and "' data'" in res.stdout, res.stderr


def test_pass_one_memory_is_bounded_by_the_budget():
    """However many documents stream by, a source keeps only the smallest keys covering the budget."""
    from tokenizer.sample import SourceSample

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, size=20_000)
    s = SourceSample()
    for i, k in enumerate(keys.tolist()):
        s.offer(k, 0, i, 100, keep_bytes=5_000)
        assert len(s.heap) <= 50
    assert [row for _, row, _ in s.ordered()] == np.argsort(keys)[:50].tolist()


def test_token_shard_names_are_path_safe():
    from tokenizer.encode import token_shard_name

    assert token_shard_name("web__part-00000.jsonl", "web") == "web__part-00000.jsonl.web.arrow"
    assert token_shard_name("p", "a/b c.d") == "p.a%2Fb%20c.d.arrow"


def test_no_drawable_text_is_a_clear_error(stage, tmp_path):
    with pytest.raises(ValueError, match=r"no training text drawn .*\['books', 'code', 'web'\]"):
        train_tokenizer(stage, tmp_path / "tok", tiny_cfg("source_weights={nosuch: 1}"))


def test_cli_errors_are_one_line_and_exit_1(tmp_path, capsys):
    from tokenizer.cli import main

    assert main(["train", "--input", str(tmp_path), "--out", str(tmp_path / "t")]) == 1
    assert "manifest.json not found" in capsys.readouterr().err
    assert main(["inspect", "--tokenizer", str(tmp_path), "x"]) == 1
    assert "is " + str(tmp_path) + " a tokenizer directory" in capsys.readouterr().err
    assert main(["encode", "--input", str(tmp_path), "--tokenizer", str(tmp_path), "--output", "o"]) == 1
