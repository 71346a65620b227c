"""HDF5's byte shuffle (utils/byte_shuffle.py): the SIMD kernels and the NumPy fallback
give the permutation HDF5's filter defines, and HDF5 reads what they write."""

from __future__ import annotations

import sys

import h5py
import numpy as np
import pytest

from utils import byte_shuffle


@pytest.fixture(params=["kernels", "numpy"])
def implementation(request, monkeypatch):
    """Each test runs on blosc2's kernels and on the NumPy fallback."""
    if request.param == "numpy":
        monkeypatch.setattr(byte_shuffle, "_KERNELS", None)
    elif byte_shuffle._KERNELS is None:
        pytest.skip("hdf5plugin's Blosc2 filter is not loadable here")
    return request.param


def test_the_kernels_load_on_linux():
    """Where the shards are written and read (Linux CI), the fast path is the one run."""
    if sys.platform.startswith("linux"):
        assert byte_shuffle._KERNELS is not None


def test_hand_made_values_give_hdf5s_byte_planes(implementation):
    values = np.array([0x04030201, 0x08070605, 0x0C0B0A09], np.uint32)
    shuffled = byte_shuffle.shuffle(values)
    # byte j of value i lands at j * n + i (little-endian bytes of each value)
    assert shuffled.tolist() == [1, 5, 9, 2, 6, 10, 3, 7, 11, 4, 8, 12]
    back = byte_shuffle.unshuffle(shuffled.tobytes(), np.uint32, (3,))
    assert back.tolist() == values.tolist()


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [("float32", (26, 37, 41)), ("float16", (3, 5, 7)), ("float64", (1001,)), ("float32", (1,))],
)
def test_round_trip_and_reference(implementation, dtype, shape):
    rng = np.random.default_rng(0)
    array = rng.standard_normal(shape).astype(dtype)
    itemsize = array.itemsize
    reference = array.view(np.uint8).reshape(-1, itemsize).T.ravel()
    shuffled = byte_shuffle.shuffle(array)
    assert shuffled.dtype == np.uint8 and np.array_equal(shuffled, reference)
    back = byte_shuffle.unshuffle(bytes(shuffled), dtype, shape)
    assert back.flags.writeable and back.dtype == dtype and back.shape == shape
    assert np.array_equal(back.view(np.uint8), array.view(np.uint8))


def test_a_view_is_shuffled_by_its_values(implementation):
    """A strided view is shuffled as the C-ordered array of its values."""
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    view = base[::2, 1::3]
    assert np.array_equal(byte_shuffle.shuffle(view), byte_shuffle.shuffle(view.copy()))


def test_short_input_is_refused(implementation):
    with pytest.raises(ValueError):
        byte_shuffle.unshuffle(b"\0" * 11, np.float32, (3,))


def test_hdf5_reads_what_shuffle_wrote(tmp_path, implementation):
    """A chunk shuffled here and stored raw under HDF5's shuffle filter reads back as the
    array: the same permutation as HDF5's own filter."""
    array = np.random.default_rng(1).random((4, 9, 9)).astype(np.float32)
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        data = handle.create_dataset(
            "d", shape=(1, *array.shape), dtype="f4", chunks=(1, *array.shape), shuffle=True
        )
        data.id.write_direct_chunk((0, 0, 0, 0), byte_shuffle.shuffle(array).tobytes())
    with h5py.File(tmp_path / "s.h5", "r") as handle:
        assert np.array_equal(handle["d"][0], array)
