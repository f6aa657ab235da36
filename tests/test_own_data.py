"""docs/own_data.md, run: every documented command of each case (clean images + labels, noisy images + labels,
noisy images only) on a generated EM-like volume of each documented layout (CREMI-layout HDF5, zarr, OME-Zarr
written by hand as NGFF 0.4, TIFF stack + label stack), through MONAI's bundle CLI (``fire`` over
``monai.bundle.scripts.run``, as ``python -m monai.bundle`` does) with tiny sizes added. Plus the pieces the
commands rest on: layout detection, the default splits and the strategy/data consistency errors."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage as ndi

from monai_denoiseg.bundle import default_splits, detect_layout, split_keys

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "own_data.md"
BUNDLE = ROOT / "bundles" / "em_denoiseg"
SHAPE = (10, 96, 96)  # default splits: train z 0-6, validation 7, test 8-9
TINY = ["--epochs", "2", "--iterations_per_epoch", "2", "--batch_size", "2", "--features", "[4,8,16,32]",
        "--patch_size", "[64,64]", "--roi_size", "[64,64]", "--num_workers", "0", "--pretrain_iterations", "2"]
TINY_INFERENCE = ["--features", "[4,8,16,32]", "--roi_size", "[64,64]", "--num_workers", "1"]
LAYOUTS = {"CREMI-layout HDF5": "hdf5", "zarr": "zarr", "OME-Zarr": "ome-zarr", "TIFF stack": "tiff"}


# -- the doc ----------------------------------------------------------------------------------------------------

def doc_sections() -> dict[str, str]:
    text = DOC.read_text()
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {p.splitlines()[0].strip(): p for p in parts}


def doc_layouts() -> dict[str, str]:
    """layout name -> the arguments the doc's table gives for it."""
    section = next(s for name, s in doc_sections().items() if name.endswith("Layouts"))
    rows = re.findall(r"^\| ([^|]+?) \| [^|]+ \| `([^`]+)` \|$", section, flags=re.M)
    return {name: args for name, args in rows}


def doc_commands(case: int) -> list[str]:
    """The ``python -m monai.bundle`` lines of the bash blocks of case ``case``."""
    section = next(s for name, s in doc_sections().items() if re.search(rf"\bCase {case}:", name))
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for b in blocks for line in b.splitlines() if line.startswith("python -m monai.bundle")]


def test_the_doc_has_three_cases_and_four_layouts():
    assert list(doc_layouts()) == list(LAYOUTS)
    assert [len(doc_commands(c)) for c in (1, 2, 3)] == [3, 2, 2]
    for c in (1, 2, 3):  # every command names the volume as the layouts table does, so the test can swap it
        assert all("my_volume.h5" in cmd for cmd in doc_commands(c))


# -- generated data ---------------------------------------------------------------------------------------------

def synthetic_em(shape=SHAPE, cells: int = 14, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(clean uint8, ids uint32 with 0 on membranes): Voronoi cells drifting through z, dark membranes,
    textured cytoplasm; an EM-like stand-in that no repository file is a copy of."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    centres, drift = rng.uniform(0, [y, x], size=(cells, 2)), rng.normal(0, 1.0, size=(cells, 2))
    tone = rng.uniform(120, 220, cells)
    yy, xx = np.mgrid[:y, :x]
    clean, ids = np.zeros(shape, np.uint8), np.zeros(shape, np.uint32)
    for k in range(z):
        c = centres + k * drift
        cell = ((yy[..., None] - c[:, 0]) ** 2 + (xx[..., None] - c[:, 1]) ** 2).argmin(-1) + 1
        membrane = ndi.morphological_gradient(cell, size=3) > 0
        ids[k] = np.where(membrane, 0, cell)
        image = np.where(membrane, 30.0, tone[cell - 1]) + ndi.gaussian_filter(rng.normal(0, 25, (y, x)), 2)
        clean[k] = np.clip(ndi.gaussian_filter(image, 0.7), 0, 255)
    return clean, ids


def write_layout(folder: Path, layout: str, image: np.ndarray, labels: np.ndarray | None) -> None:
    """The documented layouts, written with h5py / zarr / tifffile directly (not with the toolkit's writers)."""
    if layout == "hdf5":
        with h5py.File(folder / "my_volume.h5", "w") as f:
            f["volumes/raw"] = image
            if labels is not None:
                f["volumes/labels/neuron_ids"] = labels.astype(np.uint64)
    elif layout == "zarr":
        g = zarr.open_group(folder / "my_volume.zarr", mode="w")
        g.create_array("raw", data=image, chunks=(1, 64, 64))
        if labels is not None:
            g.create_array("labels", data=labels, chunks=(1, 64, 64))
    elif layout == "ome-zarr":  # NGFF 0.4 (zarr v2), as ome-zarr-py and most converters still write it
        g = zarr.open_group(folder / "my_volume.ome.zarr", mode="w", zarr_format=2)
        axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]

        def multiscales(name):
            return [{"version": "0.4", "name": name, "axes": axes, "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [50.0, 4.0, 4.0]}]}]}]

        g.create_array("0", data=image, chunks=(1, 64, 64))
        g.attrs["multiscales"] = multiscales("image")
        if labels is not None:
            group = g.create_group("labels")
            group.attrs["labels"] = ["cells"]
            cells = group.create_group("cells")
            cells.create_array("0", data=labels, chunks=(1, 64, 64))
            cells.attrs.update({"multiscales": multiscales("cells"), "image-label": {"version": "0.4"}})
    else:
        tifffile.imwrite(folder / "my_volume.tif", image, photometric="minisblack")
        if labels is not None:
            tifffile.imwrite(folder / "my_labels.tif", labels, photometric="minisblack")


def noisy(clean: np.ndarray, seed: int = 1) -> np.ndarray:
    return np.clip(clean + np.random.default_rng(seed).normal(0, 30, clean.shape), 0, 255).astype(np.uint8)


# -- running a documented command -------------------------------------------------------------------------------

def run_documented(cmd: str, layout_args: str) -> None:
    """One line of the doc, its volume swapped for the generated one of a layout, run as the CLI runs it."""
    import fire
    from monai.bundle.scripts import run

    volume = shlex.split(layout_args)[1]
    cmd = cmd.replace("--train_file my_volume.h5", layout_args).replace("--input_file my_volume.h5",
                                                                        f"--input_file {volume}")
    argv = shlex.split(cmd.replace("bundles/em_denoiseg/", f"{BUNDLE}/"))
    assert argv[:4] == ["python", "-m", "monai.bundle", "run"], cmd
    extra = TINY_INFERENCE if argv[4] == "inference" else TINY
    fire.Fire({"run": run}, command=argv[3:] + extra)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The user's folder: commands run there, relative run folders land there; the bundle stays untouched."""
    before = _files(BUNDLE)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert _files(BUNDLE) == before, "a documented command wrote into the bundle's source folder"


def _metrics(run: Path, folder: str, tag: str) -> dict:
    files = sorted((run / folder).glob(f"metrics_{tag}_epoch*.json"))
    assert files, f"no metrics in {run / folder}"
    return json.loads(files[-1].read_text())[0]


def _check_training(run: Path, model: str) -> None:
    assert (run / "models" / model).is_file() and list((run / "checkpoints").glob("*.pt"))
    assert len(list((run / "validation").glob("metrics_val_epoch*.json"))) >= 2  # at least two validations a run
    assert list((run / "tensorboard").iterdir())


def _check_predictions(run: Path, segments: bool = True) -> None:
    with h5py.File(run / "test" / "predictions_test_epoch1.h5", "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        shapes = {n: f[n].shape for n in names}
        dtypes = {n: f[n].dtype for n in names}
    denoised = [n for n in names if "denoised" in n]
    assert denoised and all(shapes[n] == (2, *SHAPE[1:]) and dtypes[n] == np.uint8 for n in denoised), shapes
    if segments:
        inst = [n for n in names if "instances" in n]
        assert inst and all(shapes[n] == (2, *SHAPE[1:]) for n in inst), shapes


def _check_inference(work: Path, volume: str, segments: bool) -> None:
    out = zarr.open_group(work / "runs" / "em_denoiseg" / "inference" / f"{volume}.zarr", mode="r")
    assert out["s0"].shape == SHAPE and out["s0"].dtype == np.uint8
    assert ("labels" in out) == segments
    if segments:
        assert out["labels/instances/s0"].shape == SHAPE and int(np.asarray(out["labels/instances/s0"]).max()) > 0


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_case1_clean_images_and_labels(workdir, layout):
    clean, ids = synthetic_em()
    write_layout(workdir, LAYOUTS[layout], clean, ids)
    for cmd in doc_commands(1):
        run_documented(cmd, doc_layouts()[layout])
    run = workdir / "runs" / "em_denoiseg" / "joint_seed0"
    _check_training(run, "model.pt")
    m = _metrics(run, "test", "test")
    for key in ("psnr_final", "ssim_final", "voi", "voi_split", "voi_merge", "arand"):
        assert np.isfinite(m[key]), (key, m)
    _check_predictions(run)
    _check_inference(workdir, "my_volume", segments=True)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_case2_noisy_images_and_labels(workdir, layout):
    clean, ids = synthetic_em()
    write_layout(workdir, LAYOUTS[layout], noisy(clean), ids)
    for cmd in doc_commands(2):
        run_documented(cmd, doc_layouts()[layout])
    run = workdir / "runs" / "em_denoiseg" / "n2v_joint_supervised_seed0"
    _check_training(run, "model_n2v_joint_supervised.pt")
    m = _metrics(run, "test", "test")
    assert np.isfinite(m["voi"]) and np.isfinite(m["arand"])
    assert not [k for k in m if k.startswith(("psnr", "ssim"))], m  # no clean image: nothing to compare with
    _check_predictions(run)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_case3_noisy_images_only(workdir, layout):
    clean, _ = synthetic_em()
    write_layout(workdir, LAYOUTS[layout], noisy(clean), None)
    args = re.sub(r" --train_label_file \S+", "", doc_layouts()[layout])  # "the layouts carry no labels"
    for cmd in doc_commands(3):
        run_documented(cmd, args)
    run = workdir / "runs" / "em_denoiseg" / "n2v_only_seed0"
    _check_training(run, "model_n2v_only.pt")
    assert set(_metrics(run, "validation", "val")) == {"volume", "self_supervised_loss"}  # selected without labels
    _check_inference(workdir, "my_volume", segments=False)


# -- what the commands rest on ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_detect_layout_finds_the_image_and_labels_of_each_layout(tmp_path, layout):
    clean, ids = synthetic_em(shape=(3, 32, 32))
    write_layout(tmp_path, LAYOUTS[layout], clean, ids)
    args = shlex.split(doc_layouts()[layout])
    volume, labels = tmp_path / args[1], (tmp_path / args[3] if len(args) > 2 else None)
    expected = {"hdf5": ("volumes/raw", "volumes/labels/neuron_ids"), "zarr": ("raw", "labels"),
                "ome-zarr": (None, "labels/cells"), "tiff": (None, None)}[LAYOUTS[layout]]
    got = detect_layout(volume, label_file=labels)
    assert (got["raw_key"], got["label_key"], got["labels"], got["shape"]) == (*expected, True, (3, 32, 32))
    write_layout(tmp_path, LAYOUTS[layout], clean, None)  # rewritten without labels (the TIFF's stays beside)
    if LAYOUTS[layout] != "tiff":
        assert detect_layout(volume)["labels"] is False


def test_detect_layout_errors_name_the_file_and_list_its_datasets(tmp_path):
    clean, ids = synthetic_em(shape=(3, 32, 32))
    write_layout(tmp_path, "hdf5", clean, ids)
    h5 = tmp_path / "my_volume.h5"
    with pytest.raises(KeyError, match=r"'volumes/rawx'.*my_volume\.h5.*\['volumes/labels/neuron_ids', 'volumes/raw'\]"):
        detect_layout(h5, raw_key="volumes/rawx")
    with pytest.raises(KeyError, match=r"'ids'.*my_volume\.h5"):
        detect_layout(h5, label_key="ids")
    write_layout(tmp_path, "zarr", clean, ids)
    with pytest.raises(KeyError, match=r"my_volume\.zarr.*'image'.*\['labels', 'raw'\]"):
        detect_layout(tmp_path / "my_volume.zarr", raw_key="image")
    with h5py.File(tmp_path / "two.h5", "w") as f:  # two images, neither with a known name: ask, do not guess
        f["a"], f["b"] = clean, clean
    with pytest.raises(KeyError, match=r"cannot tell.*two\.h5.*\['a', 'b'\].*--raw_key"):
        detect_layout(tmp_path / "two.h5")
    write_layout(tmp_path, "tiff", clean, ids)
    with pytest.raises(ValueError, match=r"my_volume\.tif.*one unnamed volume"):
        detect_layout(tmp_path / "my_volume.tif", raw_key="raw")
    with pytest.raises(FileNotFoundError, match=r"train_label_file.*nothere\.tif"):
        detect_layout(tmp_path / "my_volume.tif", label_file=tmp_path / "nothere.tif")
    with pytest.raises(FileNotFoundError, match=r"input_file.*missing\.zarr"):
        detect_layout(tmp_path / "missing.zarr", name="input_file")
    with pytest.raises(ValueError, match=r"train_file: required"):
        detect_layout(None)
    (tmp_path / "junk.h5").write_bytes(b"not an hdf5 file at all")
    with pytest.raises(OSError, match=r"junk\.h5.*not a readable HDF5"):
        detect_layout(tmp_path / "junk.h5")


def test_default_splits_are_disjoint_contiguous_70_10_20_blocks_that_cover_the_volume():
    assert default_splits(10) == {"train": [0, 7], "val": [7, 8], "test": [8, 10]}
    assert default_splits(30) == {"train": [0, 21], "val": [21, 24], "test": [24, 30]}  # docs/own_data.md §8
    for depth in range(3, 400):
        s = default_splits(depth)
        bounds = [s["train"][0], s["train"][1], s["val"][1], s["test"][1]]
        assert s["val"][0] == s["train"][1] and s["test"][0] == s["val"][1]  # contiguous, never overlapping
        assert bounds[0] == 0 and bounds[-1] == depth and all(a < b for a, b in zip(bounds, bounds[1:])), (depth, s)
        if depth >= 20:  # the fractions, within one slice of rounding
            assert abs(s["train"][1] - 0.7 * depth) <= 1 and abs(s["test"][0] - 0.8 * depth) <= 1, (depth, s)
    given = {"train": [0, 5], "val": [5, 6], "test": [6, 9]}
    assert default_splits(100, given) == given
    with pytest.raises(ValueError, match=r"2 slice\(s\).*--splits"):
        default_splits(2)


def test_split_keys_refuse_a_strategy_the_data_cannot_train():
    with pytest.raises(ValueError, match=r"'joint' trains on clean images.*noise is none.*n2v_joint_supervised"):
        split_keys("joint", "train", noise=None)
    with pytest.raises(ValueError, match=r"'sequential' trains on clean images"):  # via its DN-only pretraining
        split_keys("sequential", "train", noise=None)
    with pytest.raises(ValueError, match=r"'n2v_joint_supervised' trains a segmenter on labels.*n2v_only"):
        split_keys("n2v_joint_supervised", "train", noise=None, labels=False)
    assert split_keys("n2v_joint_supervised", "train", noise=None) == ("noisy", "label")
    assert split_keys("n2v_only", "train", noise=None, labels=False) == ("noisy",)
    assert split_keys("n2v_only", "val", noise=None, labels=False) == ("noisy",)
    assert split_keys("joint", "test", noise="gaussian_poisson") == ("noisy", "clean", "label")
