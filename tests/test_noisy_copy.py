"""Fixed noisy copies: reproducibility, per-slice draws, provenance, file formats and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile

from monai_denoiseg.data.noisy_copy import main, make_noisy_copy, write_noisy_copy


@pytest.fixture
def volume(rng):
    """A small generated 0-255 stack (never real data in tmp files): smooth structure plus texture."""
    z, y, x = np.mgrid[0:6, 0:48, 0:40]
    smooth = 128 + 60 * np.sin(y / 5.0 + z) * np.cos(x / 7.0)
    return np.clip(smooth + rng.normal(0, 5, z.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("noise", ["gaussian_poisson", "film"])
def test_same_seed_same_bytes_other_seed_other_bytes(volume, noise):
    a, b, c = (make_noisy_copy(volume, noise, seed=s) for s in (3, 3, 4))
    assert a.dtype == np.uint8 and a.shape == volume.shape
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert make_noisy_copy(volume[0], noise, seed=3).shape == volume.shape[1:]  # a single 2-D image


@pytest.fixture
def cremi_file(tmp_path):
    """Factory: write a volume as a CREMI-layout HDF5 file in tmp_path and return its path."""

    def write(vol, name="src.h5", resolution=(40.0, 4.0, 4.0)):
        path = tmp_path / name
        with h5py.File(path, "w") as f:
            f.create_dataset("volumes/raw", data=vol).attrs["resolution"] = resolution
        return path

    return write


def test_parameters_are_drawn_per_slice_and_recorded(cremi_file, tmp_path):
    flat = np.full((8, 96, 96), 128, np.uint8)  # constant slices: each slice's spread reveals its sigma
    params = {"sigma_range": (10, 60), "lam_range": (0.7, 0.7)}
    noisy = make_noisy_copy(flat, seed=0, **params).astype(np.float64)
    sd = noisy.reshape(8, -1).std(1)
    assert np.ptp(sd) > 20  # one sigma per slice, not one per volume
    dst = write_noisy_copy(cremi_file(flat), tmp_path / "out.h5", seed=0, **params)
    with h5py.File(dst, "r") as f:
        sigma = f["volumes/raw_noisy_gp"].attrs["sigma_per_slice"]
        np.testing.assert_array_equal(f["volumes/raw_noisy_gp"][()], noisy.astype(np.uint8))
    # closed form (clipping negligible up to sigma 60 at mid-grey): Var = x / lam + sigma^2 + 1/12 (rounding)
    np.testing.assert_allclose(sd, np.sqrt(128 / 0.7 + sigma**2 + 1 / 12), rtol=0.06)


def test_hdf5_copy_is_added_next_to_the_raw_data_with_provenance(volume, cremi_file):
    src = cremi_file(volume)
    write_noisy_copy(src, src, noise="gaussian_poisson", seed=5)
    write_noisy_copy(src, src, noise="film", seed=5, intensity_range=(0.5, 1.0))
    with h5py.File(src, "r") as f:
        gp, film = f["volumes/raw_noisy_gp"], f["volumes/raw_noisy_film"]
        np.testing.assert_array_equal(gp[()], make_noisy_copy(volume, "gaussian_poisson", seed=5))
        np.testing.assert_array_equal(film[()], make_noisy_copy(volume, "film", seed=5, intensity_range=(0.5, 1.0)))
        np.testing.assert_array_equal(f["volumes/raw"][()], volume)  # the source is untouched
        assert gp.attrs["noise"] == "gaussian_poisson" and gp.attrs["seed"] == 5 and "Poisson" in gp.attrs["formula"]
        np.testing.assert_allclose(gp.attrs["resolution"], [40, 4, 4])
        np.testing.assert_allclose(gp.attrs["sigma_range"], [55, 85])
        assert gp.attrs["sigma_per_slice"].shape == gp.attrs["lam_per_slice"].shape == (6,)
        assert ((0.6 <= gp.attrs["lam_per_slice"]) & (gp.attrs["lam_per_slice"] <= 0.8)).all()
        a = film.attrs["intensity_per_slice"]
        assert film.attrs["kernel_size"] == 5 and ((0.5 <= a) & (a <= 1.0)).all()
    with pytest.raises(FileExistsError, match="raw_noisy_gp.*overwrite"):
        write_noisy_copy(src, src, seed=6)
    write_noisy_copy(src, src, seed=6, overwrite=True)
    with h5py.File(src, "r") as f:
        np.testing.assert_array_equal(f["volumes/raw_noisy_gp"][()], make_noisy_copy(volume, seed=6))


def test_tiff_copies_are_byte_identical_and_nifti_keeps_its_axes(volume, cremi_file, tmp_path):
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, volume)
    a, b = write_noisy_copy(src, tmp_path / "a.tif", seed=1), write_noisy_copy(src, tmp_path / "b.tif", seed=1)
    assert a.read_bytes() == b.read_bytes()
    np.testing.assert_array_equal(tifffile.imread(a), make_noisy_copy(volume, seed=1))
    with tifffile.TiffFile(a) as tif:
        meta = json.loads(tif.pages[0].description)
    assert meta["seed"] == 1 and len(meta["sigma_per_slice"]) == 6 and meta["noise"] == "gaussian_poisson"
    with pytest.raises(FileExistsError, match="overwrite"):
        write_noisy_copy(src, a, seed=2)
    # NIfTI stores x-y-z: sections are the third voxel axis, and the affine is kept
    nii = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(volume.T.copy(), np.diag([4.0, 4.0, 40.0, 1.0])), nii)
    out = nib.load(write_noisy_copy(nii, tmp_path / "noisy.nii.gz", noise="film", seed=2))
    np.testing.assert_array_equal(np.asanyarray(out.dataobj).T, make_noisy_copy(volume, "film", seed=2))
    np.testing.assert_allclose(out.affine, np.diag([4.0, 4.0, 40.0, 1.0]))
    assert json.loads(out.header.extensions[0].get_content())["noise"] == "film"
    # across formats: CREMI HDF5 (z-y-x, resolution 40, 4, 4 nm) to NIfTI (x-y-z voxel sizes)
    out = nib.load(write_noisy_copy(cremi_file(volume), tmp_path / "from_h5.nii", seed=4))
    np.testing.assert_array_equal(np.asanyarray(out.dataobj).T, make_noisy_copy(volume, seed=4))
    np.testing.assert_allclose(np.diag(out.affine), [4, 4, 40, 1])


def test_bad_inputs_raise_clear_errors(volume, cremi_file, tmp_path):
    with pytest.raises(ValueError, match=r"0-255 intensities .* \[0, 1000\]"):
        make_noisy_copy(np.array([[0, 1000]], np.uint16))
    with pytest.raises(ValueError, match=r"volume: expected a \(Y, X\) image or a \(Z, Y, X\) stack, got shape"):
        make_noisy_copy(np.zeros((1, 2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="sigma_range: not a parameter of noise 'film'"):
        make_noisy_copy(volume, "film", sigma_range=(1, 2))
    with pytest.raises(ValueError, match="noise: expected one of"):
        make_noisy_copy(volume, "speckle")
    with pytest.raises(ValueError, match="no dataset 'volumes/rawx'"):
        write_noisy_copy(cremi_file(volume), tmp_path / "o.h5", key="volumes/rawx")
    with pytest.raises(ValueError, match="unsupported file type"):
        write_noisy_copy(cremi_file(volume), tmp_path / "o.png")


def test_command_line_writes_a_reproducible_copy(volume, cremi_file, tmp_path):
    src = cremi_file(volume)
    args = [str(src), str(tmp_path / "out.h5"), "--seed", "3", "--lam-range", "0.7", "0.7"]
    cmd = [sys.executable, "-m", "monai_denoiseg.data.noisy_copy", *args]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "volumes/raw_noisy_gp" in run.stdout and "RuntimeWarning" not in run.stderr
    with h5py.File(tmp_path / "out.h5", "r") as f:
        expected = make_noisy_copy(volume, seed=3, lam_range=(0.7, 0.7))
        np.testing.assert_array_equal(f["volumes/raw_noisy_gp"][()], expected)
    with pytest.raises(SystemExit) as refused:  # the same run again: refused without --overwrite
        main([str(src), str(tmp_path / "out.h5"), "--seed", "3"])
    assert refused.value.code == 2
    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    assert helped.value.code == 0


def test_real_medulla_crop_gets_the_documented_noise_level(medulla):
    raw = medulla[0]
    noisy = make_noisy_copy(raw, seed=0).astype(np.float64)
    per_slice = 10 * np.log10(255.0**2 / np.mean((noisy - raw) ** 2, axis=(1, 2)))
    assert ((10.5 < per_slice) & (per_slice < 14.0)).all()  # docs/noise.md
