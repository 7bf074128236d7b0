"""Calibration / evaluation text: built-in corpora, files, hub names offline, token blocks."""

import numpy as np
import pytest

from refengine.quant.calib import CalibrationDataError, calibration_ids, load_texts, token_blocks


def test_builtin_corpora_are_real_text_and_disjoint():
    calib, what = load_texts("stdlib")
    held_out, _ = load_texts("python-reference")
    assert "standard library" in what
    assert sum(map(len, calib)) > 300_000 and sum(map(len, held_out)) > 300_000
    # held out: no paragraph of the evaluation text appears in the calibration text
    joined = "\n".join(calib)
    paragraphs = [p for t in held_out for p in t.split("\n\n") if len(p) > 120]
    assert len(paragraphs) > 500 and not any(p in joined for p in paragraphs)


def test_files_text_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("plain text\n\nmore")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "meta": 1}\n')
    assert load_texts(str(tmp_path / "a.txt"))[0] == ["plain text\n\nmore"]
    assert load_texts(str(tmp_path / "b.jsonl"))[0] == ["one", "two"]
    (tmp_path / "c.jsonl").write_text('{"content": "no text field"}\n')
    with pytest.raises(CalibrationDataError, match="line 1 has no string field"):
        load_texts(str(tmp_path / "c.jsonl"))
    (tmp_path / "d.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CalibrationDataError, match="cannot be read as UTF-8"):
        load_texts(str(tmp_path / "d.txt"))
    (tmp_path / "e.txt").write_text("  \n")
    with pytest.raises(CalibrationDataError, match="no text"):
        load_texts(str(tmp_path / "e.txt"))


def test_hub_dataset_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for name in ("pileval", "someone/some-corpus"):
        with pytest.raises(CalibrationDataError, match="not in the local Hugging Face cache") as e:
            load_texts(name)
        assert "\n" not in str(e.value)


def test_token_blocks_are_disjoint_and_spread():
    ids = list(range(1000))
    blocks = token_blocks(ids, samples=4, seqlen=100, where="x")
    assert blocks.shape == (4, 100)
    starts = sorted(int(b[0]) for b in blocks)
    assert starts == [0, 200, 500, 700] and all((np.diff(b) == 1).all() for b in blocks)
    assert token_blocks(ids, samples=50, seqlen=100, where="x").shape == (10, 100)      # as many as there are
    with pytest.raises(CalibrationDataError, match="fewer than one sequence"):
        token_blocks(ids, samples=1, seqlen=2000, where="x")


def test_calibration_ids_from_a_file(tmp_path):
    class CharTokenizer:
        def encode(self, text, add_special_tokens=True):
            return [ord(c) % 100 for c in text]
    (tmp_path / "t.txt").write_text("abcdefghij" * 30)
    ids, what = calibration_ids(CharTokenizer(), str(tmp_path / "t.txt"), samples=3, seqlen=50)
    assert ids.shape == (3, 50) and ids.dtype == np.int64 and what.endswith("t.txt")
