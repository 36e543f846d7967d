"""labkit.grading.plain: an answer's result as plain JSON data, read without the answer's methods."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from labkit.grading.plain import MAX_DEPTH, MAX_ITEMS, describe, text, to_plain, value_of

from .hostile import AlwaysEqual

# -- hostile answers ----------------------------------------------------------------------------


class LyingList(list):
    def __iter__(self):
        return iter([1, 2, 3])

    def __eq__(self, other):
        return True

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return 1


class LyingInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__

    def __index__(self):
        return 42

    def __int__(self):
        return 42


class FakeList:
    @property
    def __class__(self):
        return list

    def __iter__(self):
        return iter([1, 2, 3])

    def __eq__(self, other):
        return True

    __hash__ = object.__hash__


class BadRepr:
    def __repr__(self):
        raise RuntimeError("no repr for you")

    def __str__(self):
        raise RuntimeError("no str either")


class NotStrRepr:
    def __repr__(self):
        return 5  # repr() itself raises TypeError


class LyingStr(str):
    def __str__(self):
        return "lie"

    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


class LyingFloat(float):
    def __float__(self):
        return 99.0

    def __eq__(self, other):
        return True

    __hash__ = float.__hash__


class LyingDict(dict):
    def items(self):
        return [("fake", 1)]

    def __iter__(self):
        return iter(["fake"])


class Boom(ValueError):
    pass


def _roundtrips(plain):
    assert json.loads(json.dumps(plain, allow_nan=False)) == plain
    return plain


# -- builtins -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, True, False, 0, -7, 10**30, 1.5, -0.25, "", "héllo", [], {}])
def test_builtins_pass_through_unchanged(value):
    plain = _roundtrips(to_plain(value))
    assert plain == value and type(plain) is type(value)


def test_bool_stays_bool_and_int_stays_int():
    assert to_plain(True) is True
    assert type(to_plain(1)) is int


def test_tuples_become_lists_recursively():
    assert _roundtrips(to_plain((1, (2, 3), [4, (5,)]))) == [1, [2, 3], [4, [5]]]
    assert type(to_plain((1, 2))) is list


def test_dict_with_str_keys_stays_a_dict():
    assert _roundtrips(to_plain({"a": (1, 2), "b": {"c": None}})) == {"a": [1, 2], "b": {"c": None}}


def test_dict_with_non_str_keys_is_tagged():
    plain = _roundtrips(to_plain({1: "one", (2, 3): 4}))
    assert plain == {"$": "dict", "items": [[1, "one"], [[2, 3], 4]]}


def test_dict_with_mixed_keys_is_tagged():
    plain = to_plain({"a": 1, 2: "b"})
    assert plain["$"] == "dict"
    assert plain["items"] == [["a", 1], [2, "b"]]


@pytest.mark.parametrize("value, shown", [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")])
def test_nan_and_inf_are_tagged(value, shown):
    plain = _roundtrips(to_plain(value))
    assert plain == {"$": "float", "value": shown}
    assert "NaN" not in json.dumps(plain) and "Infinity" not in json.dumps(plain)


def test_nan_inside_a_list_is_tagged():
    assert to_plain([1.0, math.nan]) == [1.0, {"$": "float", "value": "nan"}]


# -- numpy and torch ----------------------------------------------------------------------------


def test_numpy_array_is_tagged_with_its_values():
    plain = _roundtrips(to_plain(np.array([[1, 2], [3, 4]])))
    assert plain == {"$": "numpy.ndarray", "value": [[1, 2], [3, 4]]}
    assert all(type(v) is int for row in plain["value"] for v in row)


def test_numpy_float_array_with_nan_tags_the_nan():
    plain = _roundtrips(to_plain(np.array([1.0, np.nan])))
    assert plain == {"$": "numpy.ndarray", "value": [1.0, {"$": "float", "value": "nan"}]}


@pytest.mark.parametrize("scalar, expected, kind", [
    (np.int64(7), 7, int), (np.float32(0.5), 0.5, float), (np.bool_(True), True, bool), (np.int8(-3), -3, int)])
def test_numpy_scalars_become_python_scalars(scalar, expected, kind):
    plain = _roundtrips(to_plain(scalar))
    assert plain == expected and type(plain) is kind


def test_numpy_scalars_inside_lists():
    assert to_plain([np.int64(1), np.float64(2.5)]) == [1, 2.5]


def test_numpy_array_subclass_is_read_by_its_values():
    class Sneaky(np.ndarray):
        def tolist(self):
            return ["fake"]

    arr = np.array([1, 2, 3]).view(Sneaky)
    assert to_plain(arr) == {"$": "numpy.ndarray", "value": [1, 2, 3]}


def test_torch_tensor_is_tagged_with_dtype_shape_and_values():
    plain = _roundtrips(to_plain(torch.tensor([[1.0, 2.0], [3.0, 4.0]])))
    assert plain == {"$": "torch.Tensor", "dtype": "torch.float32", "shape": [2, 2],
                     "value": [[1.0, 2.0], [3.0, 4.0]]}


def test_torch_int_and_scalar_tensors():
    assert to_plain(torch.tensor([1, 2], dtype=torch.int64)) == {
        "$": "torch.Tensor", "dtype": "torch.int64", "shape": [2], "value": [1, 2]}
    assert to_plain(torch.tensor(3.5)) == {"$": "torch.Tensor", "dtype": "torch.float32", "shape": [], "value": 3.5}


def test_torch_tensor_requiring_grad_and_parameter():
    t = torch.ones(2, requires_grad=True) * 2
    assert to_plain(t)["value"] == [2.0, 2.0]
    p = torch.nn.Parameter(torch.zeros(1, 2))
    assert to_plain(p) == {"$": "torch.Tensor", "dtype": "torch.float32", "shape": [1, 2], "value": [[0.0, 0.0]]}


def test_torch_tensor_subclass_is_a_foreign_object():
    class MyTensor(torch.Tensor):
        pass

    t = torch.tensor([1.0]).as_subclass(MyTensor)
    plain = to_plain(t)
    assert plain["$"] != "torch.Tensor" and plain["$"].endswith("MyTensor")
    assert "repr" in plain
    _roundtrips(plain)


# -- objects that lie ---------------------------------------------------------------------------


def test_always_equal_object_becomes_a_tag_equal_to_no_list():
    plain = _roundtrips(to_plain(AlwaysEqual()))
    assert plain == {"$": f"{AlwaysEqual.__module__}.AlwaysEqual", "repr": "AlwaysEqual()"}
    assert plain != [1, 2, 3] and plain != [] and plain != 0 and plain != "x"


def test_always_equal_object_inside_a_list():
    plain = to_plain([1, AlwaysEqual()])
    assert plain[0] == 1 and plain[1]["$"].endswith("AlwaysEqual")
    assert plain != [1, 2]


def test_list_subclass_converts_by_its_real_items():
    lying = LyingList([9, 8])
    assert list(lying) == [1, 2, 3]  # what the answer would have us believe
    plain = to_plain(lying)
    assert plain == [9, 8] and type(plain) is list


def test_tuple_subclass_converts_by_its_real_items():
    class LyingTuple(tuple):
        def __iter__(self):
            return iter([0])

    assert to_plain(LyingTuple((4, 5))) == [4, 5]


def test_int_subclass_converts_to_its_real_value():
    x = LyingInt(5)
    assert x == 1000 and x.__index__() == 42
    plain = to_plain(x)
    assert plain == 5 and type(plain) is int
    assert plain != 42


def test_str_and_float_subclasses_convert_to_real_values():
    s = to_plain(LyingStr("truth"))
    assert s == "truth" and type(s) is str
    f = to_plain(LyingFloat(1.25))
    assert f == 1.25 and type(f) is float


def test_dict_subclass_converts_by_its_real_items():
    plain = to_plain(LyingDict({"real": 2}))
    assert plain == {"real": 2} and type(plain) is dict


def test_object_faking_its_class_is_foreign_not_a_list():
    fake = FakeList()
    assert isinstance(fake, list)  # isinstance believes it
    plain = _roundtrips(to_plain(fake))
    assert isinstance(plain, dict) and plain["$"].endswith("FakeList")
    assert plain != [1, 2, 3]


@pytest.mark.parametrize("obj, raised", [(BadRepr(), "RuntimeError"), (NotStrRepr(), "TypeError")])
def test_object_whose_repr_raises_is_described_without_raising(obj, raised):
    plain = _roundtrips(to_plain(obj))
    assert plain["$"].endswith(type(obj).__name__)
    assert raised in plain["repr"]
    assert isinstance(describe(plain), str)


def test_long_repr_is_truncated():
    class Long:
        def __repr__(self):
            return "x" * 10_000

    plain = to_plain(Long())
    assert len(plain["repr"]) < 300 and plain["repr"].endswith("...")


# -- size bounds --------------------------------------------------------------------------------


def _has_too_large(plain) -> bool:
    if isinstance(plain, dict):
        return plain.get("$") == "result too large to grade" or any(_has_too_large(v) for v in plain.values())
    if isinstance(plain, list):
        return any(_has_too_large(v) for v in plain)
    return False


def test_deep_nesting_is_cut_off_with_too_large():
    deep: list = []
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    plain = to_plain(deep)
    assert _has_too_large(plain)
    json.dumps(plain)


def test_self_referential_list_terminates():
    loop: list = [1]
    loop.append(loop)
    plain = to_plain(loop)
    assert _has_too_large(plain)
    json.dumps(plain)


def test_nesting_within_max_depth_is_kept_whole():
    nested: list = [0]
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    assert not _has_too_large(to_plain(nested))


def test_huge_container_gives_too_large():
    plain = to_plain(list(range(MAX_ITEMS + 10)))
    assert _has_too_large(plain)
    assert plain != list(range(MAX_ITEMS + 10))


def test_huge_numpy_array_gives_too_large():
    plain = to_plain(np.zeros(MAX_ITEMS + 10))
    assert plain["$"] == "numpy.ndarray" and _has_too_large(plain)


# -- exceptions ---------------------------------------------------------------------------------


def test_exception_becomes_a_tag_with_type_bases_and_message():
    plain = _roundtrips(to_plain(ValueError("bad input")))
    assert plain == {"$": "exception", "type": "ValueError",
                     "bases": ["ValueError", "Exception", "BaseException", "object"], "message": "bad input"}


def test_exception_subclass_names_its_module_and_bases():
    plain = to_plain(Boom("x"))
    assert plain["type"] == f"{__name__}.Boom"
    assert plain["bases"][:2] == ["Boom", "ValueError"]


def test_exception_with_broken_str_is_still_described():
    class Broken(Exception):
        def __str__(self):
            raise RuntimeError("nope")

    plain = _roundtrips(to_plain(Broken()))
    assert plain["$"] == "exception" and "RuntimeError" in plain["message"]


def test_every_result_dumps_as_json():
    values = [None, 1, (1, 2), {1: 2}, math.nan, np.arange(3), np.float64(math.inf), torch.ones(2),
              AlwaysEqual(), BadRepr(), FakeList(), LyingList([1]), LyingInt(3), ValueError("v"),
              {"k": [math.inf, {2: np.int32(1)}]}, b"bytes", {1, 2}, 1 + 2j, object, len]
    for value in values:
        json.dumps(to_plain(value), allow_nan=False)


# -- value_of, describe, text -------------------------------------------------------------------


def test_value_of_unwraps_arrays_and_tensors():
    assert value_of(to_plain(np.array([1, 2]))) == [1, 2]
    assert value_of(to_plain(torch.tensor([1.0]))) == [1.0]


def test_value_of_leaves_everything_else():
    for plain in ([1, 2], 3, {"a": 1}, to_plain(AlwaysEqual()), to_plain({1: 2}), to_plain(math.nan)):
        assert value_of(plain) is plain


def test_describe_plain_values_is_their_repr():
    assert describe([1, "a"]) == "[1, 'a']"
    assert describe(None) == "None"


def test_describe_shows_types_for_tags():
    assert describe(to_plain(np.array([1, 2]))) == "numpy.ndarray [1, 2]"
    assert describe(to_plain(torch.tensor([1.0]))) == "torch.Tensor [1.0]"
    assert describe(to_plain(ValueError("bad"))) == "ValueError('bad')"
    shown = describe(to_plain(AlwaysEqual()))
    assert "AlwaysEqual" in shown and "AlwaysEqual()" in shown
    assert "float" in describe(to_plain(math.nan)) and "nan" in describe(to_plain(math.nan))


def test_describe_never_raises_on_spoofed_tags():
    # an answer's own dict that looks like a tag must not crash the grader
    for spoof in ({"$": "exception"}, {"$": "numpy.ndarray"}, {"$": "torch.Tensor"}, {"$": "exception", "type": 1}):
        plain = to_plain(spoof)
        assert isinstance(describe(plain), str)
        value_of(plain)


def test_text_is_str_of_its_argument():
    assert text(ValueError("boom")) == "boom"
    assert text("plain") == "plain"
    assert text(12) == "12"


def test_text_never_raises():
    assert "RuntimeError" in text(BadRepr())


def test_text_truncates():
    out = text("y" * 5000)
    assert out.startswith("y" * 500) and out.endswith("...") and len(out) == 503
    assert len(text("z" * 100, limit=10)) == 13
