"""`split_size`: the size of a whole split without loading its images into a dataset."""

import pytest

from onnlab.data import load_dataset
from onnlab.data.datasets import split_size


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_split_size_is_the_length_of_the_whole_split(split):
    assert split_size("mnist", split, None, seed=3) == len(load_dataset("mnist", split, None, 3))


def test_split_size_is_for_classification_tasks():
    with pytest.raises(ValueError, match="classification"):
        split_size("segmentation", "train")
