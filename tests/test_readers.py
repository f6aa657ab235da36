"""TIFF-stack and CREMI-HDF5 readers: agreement with tifffile/h5py on the real files, MONAI LoadImage, errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
import torch
from conftest import data_path
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged
from monai.utils import convert_to_tensor

from monai_denoiseg.data.readers import CremiH5Reader, TiffStackReader, to_torch_safe_ids

ISBI_RAW = data_path("isbi2012", "train-input.tif")
ISBI_LABELS = data_path("isbi2012", "train-labels.tif")
MEDULLA = data_path("medulla_fibsem.h5")


def test_tiff_stack_reads_every_page_in_file_order_through_load_image():
    direct = tifffile.imread(ISBI_RAW)
    img = LoadImage(reader=TiffStackReader(), image_only=True, dtype=None)(ISBI_RAW)
    assert isinstance(img, MetaTensor) and img.shape == (30, 512, 512) and img.dtype == torch.uint8
    np.testing.assert_array_equal(img.numpy(), direct)  # no transposition, all 30 pages
    chan = LoadImage(reader=TiffStackReader(spacing=(50, 4, 4)), image_only=True, ensure_channel_first=True)(ISBI_RAW)
    assert chan.shape == (1, 30, 512, 512) and chan.dtype == torch.float32  # LoadImage's default dtype
    np.testing.assert_allclose(chan.pixdim, [50, 4, 4])
    np.testing.assert_array_equal(chan[0].numpy(), direct)


def test_tiff_labels_keep_their_ids_and_roi_reads_a_crop():
    direct = tifffile.imread(ISBI_LABELS)
    reader = TiffStackReader(roi=(slice(3, 6), slice(100, 164), slice(None, 64)), spacing=(50, 4, 4))
    array, meta = reader.get_data(reader.read(ISBI_LABELS))
    assert array.dtype == np.uint32  # the reader itself keeps the stored dtype
    np.testing.assert_array_equal(array, direct[3:6, 100:164, :64])
    np.testing.assert_allclose(meta["affine"][:3, 3], [150, 400, 0])  # crop corner in physical units
    np.testing.assert_array_equal(meta["spatial_shape"], [3, 64, 64])
    loaded = LoadImage(reader=reader, image_only=True, dtype=None)(ISBI_LABELS)
    assert loaded.dtype == torch.int64  # MONAI's lossless uint32 -> int64
    np.testing.assert_array_equal(loaded.numpy(), direct[3:6, 100:164, :64])


def test_cremi_h5_raw_and_labels_through_load_imaged_agree_with_h5py():
    roi = (slice(100, 104), slice(60, 124), slice(0, 48))
    load = Compose(
        [
            LoadImaged("image", reader=CremiH5Reader("volumes/raw", roi=roi)),
            LoadImaged("label", reader=CremiH5Reader("volumes/labels/neuron_ids", roi=roi), dtype=None),
            EnsureChannelFirstd(["image", "label"]),
        ]
    )
    d = load({"image": MEDULLA, "label": MEDULLA})
    with h5py.File(MEDULLA, "r") as f:
        raw, lab = f["volumes/raw"][roi], f["volumes/labels/neuron_ids"][roi]
    assert d["image"].shape == d["label"].shape == (1, 4, 64, 48)
    np.testing.assert_array_equal(d["image"][0].numpy(), raw)
    assert d["label"].dtype == torch.int64 and lab.dtype == np.uint64
    np.testing.assert_array_equal(d["label"][0].numpy(), lab.astype(np.int64))
    np.testing.assert_allclose(d["label"].pixdim, [10, 10, 10])  # the `resolution` attribute, z-y-x in nm
    np.testing.assert_allclose(d["image"].affine[:3, 3], [1000, 600, 0])
    assert d["label"].meta["key"] == "volumes/labels/neuron_ids"


def test_readers_are_found_by_dotted_name_and_suffix_for_bundle_configs():
    name = "monai_denoiseg.data.readers.CremiH5Reader"  # LoadImage passes its extra arguments to the reader
    img = LoadImage(reader=name, key="volumes/labels/neuron_ids", roi=(slice(0, 2),), dtype=None)(MEDULLA)
    assert img.shape == (2, 250, 250) and img.dtype == torch.int64
    reader = TiffStackReader(roi=(slice(0, 2), slice(0, 8)))
    two = LoadImage(reader=reader, image_only=True, dtype=None)([ISBI_RAW, ISBI_LABELS])
    assert two.shape == (2, 2, 8, 512) and two.meta["original_channel_dim"] == 0  # files stacked as channels
    np.testing.assert_array_equal(two[1].numpy(), tifffile.imread(ISBI_LABELS, key=[0, 1])[:, :8])
    assert TiffStackReader().verify_suffix(["a.tif", "b.TIFF"]) and not TiffStackReader().verify_suffix("a.png")
    assert CremiH5Reader().verify_suffix("sample_A_20160501.hdf") and CremiH5Reader().verify_suffix("x.h5")


def test_monai_wraps_large_uint64_ids_silently_which_the_readers_refuse(tmp_path):
    ids = np.array([[[0, 7, 2**63 - 1], [2**64 - 1, 2**63, 5]]], dtype=np.uint64)  # CREMI uses uint64(-1)
    assert convert_to_tensor(ids).min() < 0  # the reason for the explicit check
    path = tmp_path / "labels.hdf"
    with h5py.File(path, "w") as f:
        f.create_dataset("volumes/labels/neuron_ids", data=ids).attrs["resolution"] = (40.0, 4.0, 4.0)
    too_large = r"2 such ids \(e.g. 9223372036854775808, 18446744073709551615\).*uint64_mode='view'"
    with pytest.raises(ValueError, match=too_large):
        LoadImage(reader=CremiH5Reader("volumes/labels/neuron_ids"), dtype=None)(path)
    viewed = LoadImage(reader=CremiH5Reader("volumes/labels/neuron_ids", uint64_mode="view"), dtype=None)(path)
    assert viewed.dtype == torch.int64 and viewed[0, 1, 0] == -1
    np.testing.assert_array_equal(viewed.numpy().view(np.uint64), ids)  # lossless
    np.testing.assert_allclose(viewed.pixdim, [40, 4, 4])
    small = to_torch_safe_ids(ids[:, :1, :2])
    assert small.dtype == np.int64 and small.tolist() == [[[0, 7]]]
    assert to_torch_safe_ids(np.arange(3, dtype=np.uint32)).dtype == np.uint32  # only uint64 is touched


def test_missing_files_wrong_keys_and_bad_options_raise_clear_errors(tmp_path):
    # read() only resolves names and get_data() reads, so LoadImage passes these errors on unchanged
    with pytest.raises(FileNotFoundError, match="no such file: .*nope.tif"):
        LoadImage(reader=TiffStackReader())(tmp_path / "nope.tif")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        LoadImaged("label", reader=CremiH5Reader())({"label": tmp_path / "nope.h5"})
    wrong_key = r"no dataset 'volumes/labels/clefts'.*available datasets: volumes/labels/neuron_ids, volumes/raw"
    with pytest.raises(ValueError, match=wrong_key):
        LoadImage(reader=CremiH5Reader("volumes/labels/clefts"))(MEDULLA)
    with pytest.raises(ValueError, match="no dataset 'volumes'"):  # a group is not a dataset
        CremiH5Reader("volumes").get_data(MEDULLA)
    with pytest.raises(ValueError, match="uint64_mode"):
        CremiH5Reader(uint64_mode="wrap")
    with pytest.raises(ValueError, match="roi"):
        TiffStackReader(roi=(slice(0, 10, 2),))
