"""read_volume / write_volume round trips in every format, and load_split's crop and negative z ranges."""

import numpy as np
import pytest
import tifffile
from conftest import data_path

from monai_denoiseg.data.datasets import load_split, read_volume, write_volume


@pytest.mark.parametrize("suffix", [".h5", ".tif", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint64])
def test_write_then_read_is_exact_in_every_format(tmp_path, suffix, dtype):
    ids = np.random.default_rng(0).integers(0, 2**40 if dtype == np.uint64 else 255, (3, 17, 11)).astype(dtype)
    path = write_volume(tmp_path / f"v{suffix}", ids, "volumes/labels/instances")
    back = read_volume(path, "volumes/labels/instances" if suffix == ".h5" else None)
    assert back.dtype == dtype and back.shape == ids.shape
    np.testing.assert_array_equal(back, ids)


@pytest.mark.parametrize("suffix", [".h5", ".tif", ".nii.gz"])
def test_write_volume_never_overwrites_silently_and_leaves_no_partial_file(tmp_path, suffix):
    first, second = np.zeros((2, 8, 8), np.uint8), np.ones((2, 8, 8), np.uint8)
    path = write_volume(tmp_path / f"v{suffix}", first, "a")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_volume(path, second, "a")
    np.testing.assert_array_equal(read_volume(path, "a" if suffix == ".h5" else None), first)  # nothing lost
    write_volume(path, second, "a", overwrite=True)
    np.testing.assert_array_equal(read_volume(path, "a" if suffix == ".h5" else None), second)
    if suffix == ".h5":  # another dataset joins the file, the first one stays
        write_volume(path, first, "b")
        np.testing.assert_array_equal(read_volume(path, "a"), second)
    with pytest.raises(Exception):  # a failing write (an object array) leaves the target as it was
        write_volume(path, np.array([[[object()]]]), "c", overwrite=True)
    np.testing.assert_array_equal(read_volume(path, "a" if suffix == ".h5" else None), second)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_load_split_centre_crop_and_negative_z_range(tmp_path):
    path = data_path("medulla_fibsem.h5")
    full = load_split(path, (-3, None), noise="film", cache_dir=tmp_path)
    crop = load_split(path, (-3, None), noise="film", cache_dir=tmp_path, crop=(100, 64))
    for key in ("noisy", "clean", "label"):
        assert full[key].shape == (3, 250, 250) and crop[key].shape == (3, 100, 64)
        np.testing.assert_array_equal(crop[key], full[key][:, 75:175, 93:157])  # (250 - 100) // 2, (250 - 64) // 2
    with pytest.raises(ValueError, match=r"crop: expected \(H, W\) no larger than the slices \(250, 250\)"):
        load_split(path, (0, 2), noise=None, keys=("noisy",), crop=(300, 100))


def test_load_split_from_tiff_stacks_with_labels_in_their_own_file():
    split = load_split(data_path("isbi2012", "train-input.tif"), (25, 30), raw_key=None, label_key=None,
                       label_path=data_path("isbi2012", "train-labels.tif"), noise="film")
    assert {k: v.shape for k, v in split.items()} == dict.fromkeys(("noisy", "clean", "label"), (5, 512, 512))
    np.testing.assert_array_equal(split["label"], tifffile.imread(data_path("isbi2012", "train-labels.tif"))[25:30])
    assert not np.array_equal(split["noisy"], split["clean"])


def _unlabelled_case(fraction=0.5):
    from monai_denoiseg.data.datasets import PatchDataset

    labelled = load_split(data_path("medulla_fibsem.h5"), (0, 4), keys=("noisy", "label"), crop=(64, 64))
    cube = load_split(data_path("medulla_fibsem.h5"), (0, 4), raw_key="volumes/raw_unlabelled", label_key=None,
                      keys=("noisy",), crop=(64, 64))["noisy"]
    ds = PatchDataset(labelled, (32, 32), 400, seed=1, unlabelled={"noisy": cube}, unlabelled_fraction=fraction)
    return ds, labelled, cube


def test_unlabelled_items_come_from_the_second_cube_at_the_asked_rate():
    ds, labelled, cube = _unlabelled_case(0.3)
    windows = {"labelled": np.lib.stride_tricks.sliding_window_view(labelled["noisy"], (1, 32, 32)),
               "unlabelled": np.lib.stride_tricks.sliding_window_view(cube, (1, 32, 32))}
    flags = []
    for i in range(len(ds)):
        item = ds[i]
        flags.append(float(item["labelled"][0]))
        if i < 20:  # the patch is a window of the volume its flag names (checked by brute force), labels 0 there
            source = "labelled" if flags[-1] else "unlabelled"
            patch = (item["noisy"].numpy() * 255).round().astype(np.uint8)
            assert (windows[source] == patch).all(axis=(-3, -2, -1)).any(), (i, source)
            assert (item["label"] == 0).all().item() == (source == "unlabelled")  # medulla has no label 0 here
    # 400 Bernoulli(0.3) draws: the unlabelled share lies within 4 standard deviations of 0.3
    assert abs((1 - np.mean(flags)) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 400)
    first, again = ds[7], ds[7]  # reproducible per (seed, epoch, index)
    assert all(bool((first[k] == again[k]).all()) for k in first)


def test_unlabelled_data_refuses_what_it_cannot_provide():
    from monai_denoiseg.data.datasets import PatchDataset

    _, labelled, cube = _unlabelled_case()
    with pytest.raises(ValueError, match="clean"):  # supervised strategies: an unlabelled cube has no clean image
        PatchDataset({**labelled, "clean": labelled["noisy"]}, (32, 32), 4, unlabelled={"noisy": cube})
    with pytest.raises(ValueError, match="unlabelled_fraction"):
        PatchDataset(labelled, (32, 32), 4, unlabelled={"noisy": cube}, unlabelled_fraction=1.5)
    with pytest.raises(ValueError, match=r"unlabelled: expected \(Z, Y, X\)"):
        PatchDataset(labelled, (32, 32), 4, unlabelled={"noisy": cube[0]})
    with pytest.raises(ValueError, match="does not fit in the unlabelled shape"):
        PatchDataset(labelled, (32, 32), 4, unlabelled={"noisy": cube[:, :16, :16]})
