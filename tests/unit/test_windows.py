import numpy as np
import pytest

from horovod_llm.data.windows import count_windows, join_documents, sliding_windows, split_overlap, stride


def test_stride_is_window_minus_overlap():
    assert stride(15, 7) == 8
    assert stride(4, 0) == 4


@pytest.mark.parametrize("window_size,overlap", [(1, 0), (4, 4), (4, 5), (4, -1)])
def test_invalid_window_and_overlap_are_rejected(window_size, overlap):
    with pytest.raises(ValueError):
        stride(window_size, overlap)


def test_windows_hold_window_size_plus_one_ids_at_the_stride():
    ids = np.arange(10)
    windows = sliding_windows(ids, window_size=4, overlap=2)  # span 5, stride 2
    assert windows.tolist() == [[0, 1, 2, 3, 4], [2, 3, 4, 5, 6], [4, 5, 6, 7, 8]]
    # the tail (id 9) is shorter than a window: dropped, never padded
    assert count_windows(10, 4, 2) == 3


def test_seed_project_settings_window_15_overlap_7():
    ids = np.arange(100)
    windows = sliding_windows(ids, window_size=15, overlap=7)
    assert windows.shape == (count_windows(100, 15, 7), 16)
    assert windows[1, 0] == 8  # stride 8
    assert windows[0, 8:].tolist() == windows[1, :8].tolist()  # 8 ids shared... plus target
    assert (windows[:, -1] < 100).all()


def test_input_shorter_than_one_window_gives_no_window():
    assert sliding_windows(np.arange(4), window_size=4, overlap=0).shape == (0, 5)
    assert count_windows(0, 4, 0) == 0
    assert sliding_windows(np.arange(5), window_size=4, overlap=0).tolist() == [[0, 1, 2, 3, 4]]


def test_no_overlap_tiles_the_stream():
    windows = sliding_windows(np.arange(12), window_size=3, overlap=0)
    assert windows.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]


def test_documents_are_joined_with_eos():
    stream = join_documents([np.array([5, 6]), np.array([7])], eos_id=3)
    assert stream.tolist() == [5, 6, 3, 7, 3]
    assert stream.dtype == np.int32
    assert join_documents([], eos_id=3).size == 0


def test_validation_windows_overlap_by_at_most_half_a_window():
    # the recipe's stride of an eighth (overlap 56 of 64) where the budget repeats the text
    assert split_overlap("train", 64, 56) == 56
    assert split_overlap("val", 64, 56) == 32
    # an overlap of half a window or less is the validation split's too
    assert split_overlap("val", 64, 32) == 32
    assert split_overlap("val", 15, 7) == 7
    assert split_overlap("val", 64, 0) == 0
