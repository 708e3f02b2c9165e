from __future__ import annotations

from pathlib import Path

import pytest

from nas_bert.errors import NasBertError
from nas_bert.space import load_space


def test_shipped_spaces_load():
    space = load_space("nas_bert")
    assert space.blocks * space.sublayers_per_block == 12  # 2 sublayers per MiniLM-L6 layer
    assert space.max_hidden == 384
    assert space.paths_per_block() == 4 * (1 + 7 + 7**2 + 7**3 + 7**4)  # 7 operators (3 feed-forward); an empty block too
    assert load_space("tiny").max_hidden == 32


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nblocks: 2\nsublayers_per_block: 4\nhidden_sizes: [16, 32]\nhead_size: 8\ncolour: red\n", "key 'colour': unknown key"),
        ("name: x\nblocks: 2\nsublayers_per_block: 4\nhidden_sizes: [16, 20]\nhead_size: 8\n", "not multiples of head_size"),
        ("name: x\nsublayers_per_block: 4\nhidden_sizes: [16]\n", "key 'blocks': required key is missing"),
        ("name: x\nblocks: 0\nsublayers_per_block: 4\nhidden_sizes: [16]\nhead_size: 8\n", "key 'blocks'"),
        ("name: x\nblocks: 2\nsublayers_per_block: 4\nhidden_sizes: [16]\nhead_size: 8\nconv_kernels: [4]\n", "odd"),
        ("name: [unclosed\n", "not valid YAML"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_bad_space_is_one_line_error(tmp_path, text, message):
    with pytest.raises(NasBertError, match=message) as info:
        load_space(_write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_unknown_space_name():
    with pytest.raises(NasBertError, match="not found.*nas_bert"):
        load_space("no_such_space")


def test_space_must_fit_teacher():
    space = load_space("nas_bert")
    space.check_teacher(num_layers=6, hidden_size=384)
    with pytest.raises(NasBertError, match="exceed|hidden size is 256"):
        space.check_teacher(num_layers=6, hidden_size=256)
    with pytest.raises(NasBertError, match="do not divide"):
        space.check_teacher(num_layers=4, hidden_size=384)


@pytest.mark.parametrize("name", ["nas_bert", "tiny"])
def test_operator_choices_count_what_architecture_lists(name):
    from nas_bert.space.architecture import op_choices

    space = load_space(name)
    assert all(space.operator_choices == len(op_choices(space, h)) for h in space.hidden_sizes)
