"""Input validation at load time: each bad input fails before training, naming the file, key and shape.

Real data: crops of the medulla FIB-SEM cube (CREMI-layout HDF5) and of ISBI 2012 (TIFF stack), written to
``tmp_path`` and then damaged one way per test.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import tifffile
from conftest import data_path
from monai.transforms import LoadImage

from monai_denoiseg.data.datasets import PatchDataset, load_split, read_volume
from monai_denoiseg.data.readers import CremiH5Reader, TiffStackReader
from monai_denoiseg.utils import validation

RAW, LAB = "volumes/raw", "volumes/labels/neuron_ids"


@pytest.fixture(scope="module")
def crop():
    """(raw uint8, ids uint64) of the medulla cube, shape (8, 64, 64)."""
    with h5py.File(data_path("medulla_fibsem.h5"), "r") as f:
        return f[RAW][100:108, 60:124, 60:124], f[LAB][100:108, 60:124, 60:124]


@pytest.fixture(scope="module")
def isbi_crop():
    """ISBI 2012 raw uint8, shape (8, 64, 64)."""
    return tifffile.imread(data_path("isbi2012", "train-input.tif"), key=range(8))[:, 200:264, 200:264]


def _cremi(path, raw, lab):
    with h5py.File(path, "w") as f:
        f.create_dataset(RAW, data=raw)
        f.create_dataset(LAB, data=lab)
    return path


def _named(*parts) -> str:
    """A regex matching every part, in order (each escaped)."""
    return ".*".join(re.escape(str(p)) for p in parts)


def test_float_labels_with_fractions_are_refused_not_merged(tmp_path, crop):
    raw, lab = crop
    bad = lab.astype(np.float64)
    bad[5, 10, 10], bad[5, 10, 11] = 1.2, 1.7  # int() would make both id 1
    path = _cremi(tmp_path / "float_labels.h5", raw, bad)
    with pytest.raises(ValueError, match=_named(path, LAB, "non-integer", "1.2, 1.7", "z=5", (8, 64, 64))):
        load_split(path, (0, 8), noise=None, keys=("noisy", "label"))
    with pytest.raises(ValueError, match=_named("volumes['label']", "non-integer", "z=5", (8, 64, 64))):
        PatchDataset({"noisy": raw, "label": bad}, (32, 32), 4)


def test_whole_number_float_labels_still_load_as_integer_ids(tmp_path, crop):
    raw, lab = crop
    path = _cremi(tmp_path / "float_ids.h5", raw, lab.astype(np.float64))
    split = load_split(path, (2, 6), noise=None, keys=("noisy", "label"))
    assert split["label"].dtype.kind == "u" and split["label"].shape == (4, 64, 64)
    np.testing.assert_array_equal(split["label"], lab[2:6])
    np.testing.assert_array_equal(split["noisy"], raw[2:6])
    item = PatchDataset({"noisy": raw, "label": lab.astype(np.float32)}, (32, 32), 2, seed=0)[0]
    assert item["label"].dtype.is_floating_point is False and item["label"].shape == (1, 32, 32)


def test_negative_ids_are_refused_at_load_whatever_patch_is_drawn(tmp_path, crop):
    raw, lab = crop
    bad = lab.astype(np.int64)
    bad[6, 63, 63] = -1  # one voxel: a random 32x32 patch would rarely meet it
    path = _cremi(tmp_path / "negative.h5", raw, bad)
    with pytest.raises(ValueError, match=_named(path, LAB, "z 2-8", "non-negative", "-1", "z=6", (6, 64, 64))):
        load_split(path, (2, 8), noise=None, keys=("noisy", "label"))  # z in the file, not in the split
    with pytest.raises(ValueError, match=_named("volumes['label']", "non-negative", "z=6", (8, 64, 64))):
        PatchDataset({"noisy": raw, "label": bad}, (32, 32), 4)  # at construction, before any patch


def test_checks_run_chunk_by_chunk_and_still_find_the_first_bad_slice(monkeypatch, crop):
    raw, lab = crop
    monkeypatch.setattr(validation, "CHUNK_BYTES", 3 * 64 * 64)  # 3 uint8 slices per chunk, 1 id slice
    bad = lab.astype(np.int64)
    bad[6, 0, 0] = -4
    with pytest.raises(ValueError, match="first negative at z=6"):
        validation.check_labels(bad, "label")
    image = raw.astype(np.float32) / 255
    image[7, 1, 1] = np.inf
    with pytest.raises(ValueError, match="first at z=7"):
        validation.check_finite_volume(image, "image")
    assert validation.check_labels(lab.astype(np.float32), "label").tolist() == lab.tolist()


def test_empty_volume_is_refused_naming_file_key_and_shape(tmp_path):
    path = _cremi(tmp_path / "empty.h5", np.zeros((0, 64, 64), np.uint8), np.zeros((0, 64, 64), np.uint64))
    with pytest.raises(ValueError, match=_named(path, RAW, "non-empty", (0, 64, 64))):
        load_split(path, noise=None, keys=("noisy", "label"))
    empty = {"noisy": np.zeros((0, 64, 64), np.uint8), "label": np.zeros((0, 64, 64), np.uint64)}
    with pytest.raises(ValueError, match=_named("volumes", "non-empty", (0, 64, 64))):  # not numpy's "high <= 0"
        PatchDataset(empty, (32, 32), 4)


@pytest.mark.parametrize("z_range, slices", [((4, 12), "4 to 12"), ((-20, None), "-12 to 8"), ((5, 5), "5 to 5"),
                                             ((6, 2), "6 to 2")])
def test_split_outside_the_volume_names_its_depth_and_the_range(tmp_path, crop, z_range, slices):
    path = _cremi(tmp_path / "cube.h5", *crop)
    with pytest.raises(ValueError, match=_named(path, RAW, f"z_range {z_range!r}", slices, "volume's 8 z slices")):
        load_split(path, z_range, noise=None, keys=("noisy", "label"))
    assert load_split(path, (-3, None), noise=None, keys=("noisy",))["noisy"].shape == (3, 64, 64)  # still fine


def test_truncated_hdf5_names_the_file_and_key(tmp_path, crop):
    path = _cremi(tmp_path / "truncated.h5", *crop)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=_named(path, RAW, "HDF5", "truncated")):
        load_split(path, (0, 8), noise=None, keys=("noisy",))
    with pytest.raises(OSError, match=_named(path, LAB, "HDF5", "truncated")):
        read_volume(path, LAB)
    with pytest.raises(OSError, match=_named(path, LAB, "HDF5")):
        LoadImage(reader=CremiH5Reader(LAB), dtype=None)(path)


def test_truncated_tiff_names_the_file(tmp_path, isbi_crop):
    path = tmp_path / "truncated.tif"
    tifffile.imwrite(path, isbi_crop, photometric="minisblack")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=_named(path, "TIFF", "truncated")):
        load_split(path, (0, 8), raw_key=None, noise=None, keys=("noisy",))
    with pytest.raises(OSError, match=_named(path, "TIFF")):
        LoadImage(reader=TiffStackReader(), dtype=None)(path)


@pytest.mark.parametrize("junk", [b"II*\x00" + bytes(range(256)) * 4, b"not an image at all\n" * 50],
                         ids=["tiff-header-then-junk", "text"])
def test_junk_bytes_named_tif_are_refused_not_read_as_an_empty_array(tmp_path, junk):
    path = tmp_path / "junk.tif"
    path.write_bytes(junk)
    with pytest.raises(OSError, match=_named(path, "expected a readable TIFF")):
        read_volume(path)
    with pytest.raises(OSError, match=_named(path, "TIFF")):
        LoadImage(reader=TiffStackReader(), dtype=None)(path)


def test_missing_key_lists_the_datasets_the_file_has(tmp_path, crop):
    path = _cremi(tmp_path / "cube.h5", *crop)
    with pytest.raises(KeyError, match=_named("volumes/raw_noisy", path, [LAB, RAW])):
        load_split(path, noise=None, raw_key="volumes/raw_noisy", keys=("noisy",))
    with pytest.raises(KeyError, match=_named("volumes/labels/clefts", path, [LAB, RAW])):
        load_split(path, noise=None, label_key="volumes/labels/clefts", keys=("noisy", "label"))


def test_nan_in_a_float_input_is_refused_naming_file_key_slice_and_shape(tmp_path, crop):
    raw, lab = crop
    image = raw.astype(np.float32) / 255.0
    good = _cremi(tmp_path / "float.h5", image, lab)
    image[2, 30, 30] = np.nan
    path = _cremi(tmp_path / "nan.h5", image, lab)
    with pytest.raises(ValueError, match=_named(path, RAW, "z 1-8", "expected finite values", "z=2", (7, 64, 64))):
        load_split(path, (1, 8), noise=None, keys=("noisy", "label"), intensity_range=(0, 1))
    with pytest.raises(ValueError, match=_named(good, RAW, "expected uint8 0-255", "float32", "intensity_range")):
        load_split(good, (0, 8), noise=None, keys=("noisy",))  # a float image must declare its range
    with pytest.raises(ValueError, match=_named(good, RAW, "outside the declared intensity_range (0, 0.5)")):
        load_split(good, (0, 8), noise=None, keys=("noisy",), intensity_range=(0, 0.5))
    split = load_split(good, (0, 8), noise=None, keys=("noisy",), intensity_range=(0, 1))  # declared: rescaled
    assert split["noisy"].dtype == np.uint8
    np.testing.assert_array_equal(split["noisy"], raw)


def test_raw_and_label_of_different_shapes_are_refused(tmp_path, crop, isbi_crop):
    raw, lab = crop
    path = _cremi(tmp_path / "shifted.h5", raw, lab[:, :, :60])
    with pytest.raises(ValueError, match=_named(path, LAB, (8, 64, 64), path, RAW, "got shape (8, 64, 60)")):
        load_split(path, (0, 4), noise=None, keys=("noisy", "label"))
    tifffile.imwrite(tmp_path / "raw.tif", isbi_crop, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", lab[:7].astype(np.uint32), photometric="minisblack")
    with pytest.raises(ValueError, match=_named(tmp_path / "labels.tif", (8, 64, 64), tmp_path / "raw.tif",
                                                "got shape (7, 64, 64)")):
        load_split(tmp_path / "raw.tif", (0, 4), raw_key=None, label_key=None, label_path=tmp_path / "labels.tif",
                   noise=None, keys=("noisy", "label"))
    with pytest.raises(ValueError, match=_named("volumes", "one shape", (8, 64, 64), (8, 64, 60))):
        PatchDataset({"noisy": raw, "label": lab[:, :, :60]}, (32, 32), 4)


def test_good_tiff_split_reads_only_its_pages(tmp_path, isbi_crop):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, isbi_crop, photometric="minisblack")
    np.testing.assert_array_equal(read_volume(path, roi=(slice(2, 5), slice(8, 40))), isbi_crop[2:5, 8:40])
    split = load_split(path, (-3, None), raw_key=None, label_key=None, noise=None, keys=("noisy",))
    np.testing.assert_array_equal(split["noisy"], isbi_crop[5:])
