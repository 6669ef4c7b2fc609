import numpy as np
import pytest
import torch

from zeroseg.data.classes import ClassSplit, ClassSplitError, validate_class_names


def test_split_partitions_classes_and_maps_unseen_to_ignore():
    s = ClassSplit.from_names(["cat", "dog", "sky", "road"], ["dog", "road"])
    assert s.seen == (0, 2) and s.unseen == (1, 3)
    assert s.seen_names == ("cat", "sky") and s.unseen_names == ("dog", "road")
    label = np.array([[0, 1], [2, 3], [255, 1]], dtype=np.uint8)
    out = s.to_seen_labels(label)
    assert out.tolist() == [[0, 255], [2, 255], [255, 255]]
    assert s.to_seen_labels(torch.from_numpy(label).long()).tolist() == out.tolist()
    assert s.contains_unseen(label) and not s.contains_unseen(out)


def test_lookup_table_sends_out_of_range_values_to_ignore():
    s = ClassSplit(("a", "b"), unseen=(1,))
    table = s.seen_lookup()
    assert table[0] == 0 and table[1] == 255 and table[7] == 255 and len(table) == 256


@pytest.mark.parametrize(
    "names, unseen, match",
    [
        ([], [], "empty"),
        (["a", "b", "A"], [], "duplicated class name 'A'"),
        (["a", " "], [], "entry 1"),
        (["a", "b"], ["c"], "unseen class 'c' is not one of"),
        (["a", "b"], ["a", "b"], "every class is unseen"),
    ],
)
def test_invalid_splits_name_the_problem(names, unseen, match):
    with pytest.raises(ClassSplitError, match=match):
        ClassSplit.from_names(names, unseen)


def test_ignore_index_may_not_be_a_class():
    with pytest.raises(ClassSplitError, match="collides"):
        ClassSplit(("a", "b", "c"), unseen=(), ignore_index=2)


def test_a_string_is_not_a_class_list():
    with pytest.raises(ClassSplitError, match="expected a list"):
        validate_class_names("cat,dog")


def test_round_trip_through_dict():
    s = ClassSplit.from_names(["a", "b", "c"], ["b"], thing_names=["a"])
    assert ClassSplit.from_dict(s.to_dict()) == s
    assert s.things == (0,) and s.stuff == (1, 2)


def test_seen_and_thing_masks_flag_their_indices():
    split = ClassSplit(names=("a", "b", "c", "d"), unseen=(1, 3), things=(0, 1))
    assert split.seen_mask().tolist() == [True, False, True, False]
    assert split.thing_mask().tolist() == [True, True, False, False]
    assert split.seen_mask().dtype == torch.bool
