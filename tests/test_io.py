import json

import pytest
import torch

from rewardlab.errors import InputError
from rewardlab.io import atomic_path, load_tensors, read_jsonl, save_tensors, write_json, write_jsonl


def test_jsonl_roundtrip(tmp_path):
    rows = [{"prompt": "the film", "completion": "was great .", "x": float("nan")}, {"prompt": "a", "completion": "b"}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    back = read_jsonl(tmp_path / "r.jsonl", required=("prompt", "completion"))
    assert back[0]["x"] is None and back[1] == rows[1]


def test_malformed_line_names_line_number(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": oops}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:3: malformed JSON"):
        read_jsonl(p)


def test_missing_field_and_missing_file(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"prompt": "a"}\n')
    with pytest.raises(InputError, match=r"m.jsonl:1: missing field\(s\) completion"):
        read_jsonl(p, required=("prompt", "completion"))
    with pytest.raises(InputError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_field_types_and_encoding_are_checked(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"prompt": "a", "completion": 5, "reward": 1}\n')
    with pytest.raises(InputError, match=r"t.jsonl:1: field 'completion' is int, not text"):
        read_jsonl(p, required=("prompt", "completion"))
    p.write_text('{"prompt": "a", "completion": "b", "reward": "high"}\n{"prompt": "a", "completion": "b", "reward": NaN}\n')
    with pytest.raises(InputError, match=r"t.jsonl:1: field 'reward' is 'high', not a finite number"):
        read_jsonl(p, required=("prompt",), numbers=("reward",))
    p.write_text('{"prompt": "a", "completion": "b", "reward": 1}\n{"prompt": "a", "completion": "b", "reward": NaN}\n')
    with pytest.raises(InputError, match=r"t.jsonl:2: field 'reward' is nan"):
        read_jsonl(p, numbers=("reward",))
    p.write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_jsonl(p)
    p.write_text('{"prompt": "a\u2028b"}\n', encoding="utf-8")  # a raw line separator inside a string is one line
    assert read_jsonl(p, required=("prompt",)) == [{"prompt": "a\u2028b"}]


def test_outputs_refuse_a_folder_for_a_file_and_a_file_for_a_folder(tmp_path):
    (tmp_path / "f.txt").write_text("keep")
    with pytest.raises(InputError, match="output path is a folder"):
        write_json(tmp_path, {"a": 1})
    with pytest.raises(InputError, match="output folder is an existing file"):
        write_json(tmp_path / "f.txt" / "x.json", {"a": 1})
    assert (tmp_path / "f.txt").read_text() == "keep"


def test_corrupt_safetensors_is_an_input_error(tmp_path):
    save_tensors(tmp_path / "t.safetensors", {"w": torch.ones(100)})
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_tensors(tmp_path / "t.safetensors")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_tensors_roundtrip_with_metadata(tmp_path):
    t = {"w": torch.arange(6.0).reshape(2, 3)}
    save_tensors(tmp_path / "t.safetensors", t, {"site": "blocks.0.hook_resid_pre", "mean": [1.0, 2.0]})
    back, meta = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(back["w"], t["w"])
    assert meta == {"site": "blocks.0.hook_resid_pre", "mean": [1.0, 2.0]}
