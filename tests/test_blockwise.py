"""Blockwise prediction and segmentation on volara + daisy, on real EM data: same answer as the whole volume,
resume after SIGKILL, real SQLite / PostgreSQL graphs, cluster-style workers, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
import zarr
from elf.segmentation.mutex_watershed import mutex_watershed as elf_mutex_watershed
from monai.inferers import SlidingWindowInferer

from monai_denoiseg.blockwise import open_volume, prepare_array, run_blockwise, segment_blockwise
from monai_denoiseg.blockwise.pipeline import BlockwiseError
from monai_denoiseg.inferers import BlockInferer, predict_volume
from monai_denoiseg.metrics import AdaptedRandErrorMetric, VariationOfInformationMetric
from monai_denoiseg.networks import paper_joint_net
from monai_denoiseg.postprocessing import segment
from monai_denoiseg.transforms import DEFAULT_OFFSETS_3D, PAPER_OFFSETS_2D, LabelToAffinity

from conftest import data_path

SMALL = [8, 16, 32, 64]
NET_2D = dict(spatial_dims=2, features=SMALL, denoiser_kwargs={"features": SMALL}, segmenter_kwargs={"features": SMALL})


def _net(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return paper_joint_net(**{**NET_2D, **kw}).eval()


@pytest.fixture(scope="module")
def isbi_stack(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Four 320 x 352 ISBI slices as a TIFF stack in tmp (a user's file)."""
    raw = tifffile.imread(data_path("isbi2012", "train-input.tif"))[:4, :320, :352]
    path = tmp_path_factory.mktemp("isbi") / "stack.tif"
    tifffile.imwrite(path, raw)
    return path, raw


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two labelings split the voxels the same way: every id of one meets exactly one id of the other."""
    pairs = np.unique(np.stack([a.reshape(-1), b.reshape(-1)]).astype(np.int64), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def _monai_whole(net, x: torch.Tensor, roi, overlap=0.25) -> dict[str, torch.Tensor]:
    """The reference: MONAI's sliding window over every whole slice (or the whole volume in 3-D), no blocks."""
    inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=4, overlap=overlap, mode="gaussian")
    with torch.inference_mode():
        if len(roi) == 3:
            return {k: v[0].clone() for k, v in inferer(x[None, None], lambda w: {k: t.clone() for k, t in net(w).items()}).items()}
        out = inferer(x[:, None], lambda w: {k: t.clone() for k, t in net(w).items()})
    return {k: v.transpose(0, 1).clone() for k, v in out.items()}


# ------------------------------------------------------------------------------------------ prediction
def test_blocks_reuse_the_whole_volume_windows_2d(isbi_stack):
    """Blocks give MONAI's whole-slice sliding window to float rounding, borders included."""
    _, raw = isbi_stack
    net = _net()
    x = torch.as_tensor(raw / 255.0, dtype=torch.float32)
    ref = _monai_whole(net, x, (128, 128))
    blocks = predict_volume(net, x, (128, 128), block_shape=(3, 96, 96))  # 2 x 4 x 4 blocks, objects cross faces
    for key in ("coarse", "final", "affinity_prob"):
        expected = ref[key].clamp(0, 1) if key.endswith("prob") else ref[key]
        torch.testing.assert_close(blocks[key], expected, atol=2e-5, rtol=0)


def test_blocks_reuse_the_whole_volume_windows_3d():
    with h5py.File(data_path("medulla_fibsem.h5"), "r") as f:
        raw = f["volumes/raw"][:72, :144, :144]
    kw = dict(spatial_dims=3, n_offsets=len(DEFAULT_OFFSETS_3D), features=[4, 8, 16, 32],
              denoiser_kwargs={"features": [4, 8, 16, 32]}, segmenter_kwargs={"features": [4, 8, 16, 32]})
    net = _net(1, **kw)
    x = torch.as_tensor(raw / 255.0, dtype=torch.float32)
    roi = (32, 64, 64)
    ref = _monai_whole(net, x, roi)
    blocks = predict_volume(net, x, roi, spatial_dims=3, block_shape=(24, 48, 48))  # stride (24, 48, 48): 27 blocks
    torch.testing.assert_close(blocks["final"], ref["final"], atol=2e-5, rtol=0)


def test_block_shape_and_context():
    inferer = BlockInferer((256, 256), overlap=0.25)
    assert inferer.stride == (192, 192) and inferer.context == ((0, 192, 192), (0, 64, 64))
    assert inferer.check_block_shape((5, 384, 576)) == (5, 384, 576)
    for bad in ((4, 100, 100), (4, 384, 400), (0, 384, 384), (384, 384)):
        with pytest.raises(ValueError, match="block_shape"):
            inferer.check_block_shape(bad)


# ------------------------------------------------------------------------------------- whole pipeline
def test_run_blockwise_2d_tiff_stack(isbi_stack, tmp_path):
    src, raw = isbi_stack
    net = _net()
    paths = run_blockwise(net, src, tmp_path, roi_size=(128, 128), block_shape=(2, 96, 96), num_workers=2,
                          pyramid_levels=1)
    den = zarr.open_array(paths["denoised"])[:]
    ref = _monai_whole(net, torch.as_tensor(raw / 255.0, dtype=torch.float32), (128, 128))
    ref_u8 = np.clip(np.rint(ref["final"][0].numpy() * 255), 0, 255).astype(np.uint8)
    assert den.dtype == np.uint8 and den.shape == raw.shape
    assert np.abs(den.astype(int) - ref_u8.astype(int)).max() <= 1  # within 1/255, borders included
    # instances: elf's mutex watershed of every slice of the stored affinities, ids disjoint across slices
    aff = zarr.open_array(paths["affinities"])[:].astype(np.float32) / 255.0
    inst = zarr.open_array(paths["instances"])[:]
    assert inst.dtype == np.uint64 and inst.shape == raw.shape
    slice_ids = [set(np.unique(s)) for s in inst]
    assert all(not (a & b) for i, a in enumerate(slice_ids) for b in slice_ids[i + 1:])
    for z in range(len(raw)):
        assert _same_partition(inst[z], elf_mutex_watershed(1 - aff[:, z], PAPER_OFFSETS_2D, [5, 5])), z
    # the pyramid level is the 2x2x2 mean of s0; OME-NGFF 0.5 metadata for napari / neuroglancer
    s1 = zarr.open_array(paths["zarr"] / "s1")[:]
    crop = den[: 2 * s1.shape[0], : 2 * s1.shape[1], : 2 * s1.shape[2]].astype(np.float64)
    pooled = crop.reshape(s1.shape[0], 2, s1.shape[1], 2, s1.shape[2], 2).mean(axis=(1, 3, 5))
    np.testing.assert_array_equal(s1, np.rint(pooled).astype(np.uint8))
    ome = dict(zarr.open_group(paths["zarr"]).attrs)["ome"]
    datasets = ome["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["s0", "s1"]
    assert datasets[1]["coordinateTransformations"][0]["scale"] == [2.0, 2.0, 2.0]
    assert dict(zarr.open_group(paths["zarr"] / "labels").attrs)["ome"]["labels"] == ["instances"]


def test_same_settings_resume_other_settings_refused(isbi_stack, tmp_path):
    src, _ = isbi_stack
    net = _net()
    kw = dict(roi_size=(128, 128), block_shape=(2, 96, 96), num_workers=1, pyramid_levels=0, offsets=None)
    run_blockwise(net, src, tmp_path, **kw)
    before = zarr.open_array(tmp_path / "stack.zarr" / "s0")[:]
    run_blockwise(net, src, tmp_path, **kw)  # the same call: resumes, nothing to do
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "stack.zarr" / "s0")[:], before)
    with pytest.raises(FileExistsError, match="overwrite"):
        run_blockwise(net, src, tmp_path, **{**kw, "overlap": 0.5, "block_shape": (2, 64, 64)})
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "stack.zarr" / "s0")[:], before)  # nothing lost
    run_blockwise(net, src, tmp_path, **{**kw, "overlap": 0.5, "block_shape": (2, 64, 64)}, overwrite=True)


_KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    from monai_denoiseg.blockwise import run_blockwise
    kw = dict(spatial_dims=2, features=[8, 16, 32, 64], denoiser_kwargs={"features": [8, 16, 32, 64]},
              segmenter_kwargs={"features": [8, 16, 32, 64]})
    run_blockwise("monai_denoiseg.networks.paper_joint_net", sys.argv[1], sys.argv[2], network_kwargs=kw,
                  checkpoint=sys.argv[3], roi_size=(128, 128), block_shape=(1, 96, 96), num_workers=1,
                  pyramid_levels=1)
""")


def _done_blocks(work: Path, task: str) -> int:
    chunks = work / f"{task}-meta" / "blocks_done.zarr" / "c"
    return sum(1 for p in chunks.rglob("*") if p.is_file()) if chunks.exists() else 0


def test_sigkill_half_way_then_resume_is_bit_identical(isbi_stack, tmp_path):
    src, raw = isbi_stack
    torch.save(_net(2).state_dict(), tmp_path / "net.pt")
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    cmd = [sys.executable, str(script), str(src)]
    subprocess.run([*cmd, str(tmp_path / "whole"), str(tmp_path / "net.pt")], check=True, capture_output=True)
    work = tmp_path / "killed" / "stack.blockwise"
    total = 4 * 4 * 4  # z x y x x blocks of the prediction
    proc = subprocess.Popen([*cmd, str(tmp_path / "killed"), str(tmp_path / "net.pt")], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _done_blocks(work, "stack-predict") < total // 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _done_blocks(work, "stack-predict")
    assert 0 < done < total, done
    rerun = subprocess.run([*cmd, str(tmp_path / "killed"), str(tmp_path / "net.pt")], check=True,
                           capture_output=True, text=True)
    report = rerun.stdout + rerun.stderr
    predict = report[report.index("Task stack-predict"):]
    skipped = int(predict.split("skipped ")[1].split(")")[0])
    assert skipped >= done  # finished blocks are not recomputed
    for name in ("s0", "s1", "affinities", "labels/instances/s0"):
        a = zarr.open_array(tmp_path / "killed" / "stack.zarr" / name)[:]
        b = zarr.open_array(tmp_path / "whole" / "stack.zarr" / name)[:]
        np.testing.assert_array_equal(a, b, err_msg=name)


_AFTER_TORCH_SCRIPT = textwrap.dedent("""
    import sys, torch
    from monai_denoiseg.blockwise import run_blockwise
    from monai_denoiseg.networks import paper_joint_net
    torch.set_num_threads(2)
    f = [8, 16, 32, 64]
    net = paper_joint_net(features=f, denoiser_kwargs={"features": f}, segmenter_kwargs={"features": f}).eval()
    with torch.inference_mode():
        net(torch.rand(1, 1, 128, 128))  # the caller has used torch's (OpenMP) thread pool before the run
    run_blockwise(net, sys.argv[1], sys.argv[2], roi_size=(128, 128), block_shape=(4, 96, 96), num_workers=1,
                  threads_per_worker=2, pyramid_levels=0, offsets=None)
""")


def test_workers_with_threads_after_the_caller_used_torch(isbi_stack, tmp_path):
    """Workers forked from a process that has run torch hang in libgomp's stale thread pool (and cannot use
    CUDA); the server process is a fresh interpreter, so a 2-thread worker runs to the end."""
    src, _ = isbi_stack
    script = tmp_path / "run.py"
    script.write_text(_AFTER_TORCH_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(src), str(tmp_path / "out")], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the hung workers too
        proc.communicate()
        pytest.fail("the run hung: a worker forked from a process that had run torch")
    assert proc.returncode == 0, err[-2000:]
    root = zarr.open_group(tmp_path / "out" / "stack.zarr", mode="r")
    assert root.attrs["monai_denoiseg"]["complete"] and root["s0"].shape == (4, 320, 352)


def test_cluster_style_workers_rebuild_the_network_from_its_spec(isbi_stack, tmp_path):
    """volara-cli workers (the SLURM/LSF path) deserialize the tasks from JSON and load the checkpoint."""
    from volara.workers import LocalWorker

    src, _ = isbi_stack
    net = _net(3)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    kw = dict(roi_size=(128, 128), block_shape=(4, 192, 192), num_workers=1, pyramid_levels=0)
    forked = run_blockwise(net, src, tmp_path / "forked", **kw)
    cli = run_blockwise("monai_denoiseg.networks.paper_joint_net", src, tmp_path / "cli", network_kwargs=NET_2D,
                        checkpoint=tmp_path / "net.pt", worker_config=LocalWorker(), **kw)
    for key in ("denoised", "affinities", "instances"):
        np.testing.assert_array_equal(zarr.open_array(cli[key])[:], zarr.open_array(forked[key])[:], err_msg=key)
    with pytest.raises(ValueError, match="cluster"):
        run_blockwise(net, src, tmp_path / "x", worker_config=LocalWorker(), **kw)


# ------------------------------------------------------------------------------------- 3-D segmentation
def _noisy_gt_affinities(n: int, sigma: float, seed: int = 0):
    with h5py.File(data_path("medulla_fibsem.h5"), "r") as f:
        gt = f["volumes/labels/neuron_ids"][:n, :n, :n].astype(np.int64)
    aff = np.asarray(LabelToAffinity(DEFAULT_OFFSETS_3D)(gt[None]))
    noise = np.random.default_rng(seed).normal(0, sigma, aff.shape)
    return gt, np.rint(np.clip(0.05 + 0.9 * aff + noise, 0, 1) * 255).astype(np.uint8)


def _scores(seg, gt):
    v = VariationOfInformationMetric(mode="volume", ignore_gt=(0,))(seg[None, None], gt[None, None])[0]
    a = AdaptedRandErrorMetric(mode="volume", ignore_gt=(0,))(seg[None, None], gt[None, None])[0]
    return float(v[0]), float(a[0])


def _affinity_store(root: Path, aff: np.ndarray, block) -> None:
    arr = prepare_array(root / "affinities", aff.shape[1:], block, (1, 1, 1), np.uint8, channels=aff.shape[0],
                        attrs={"neighborhood": [list(o) for o in DEFAULT_OFFSETS_3D]})
    arr[arr.roi] = aff


@pytest.fixture(scope="module")
def noisy_cube():
    return _noisy_gt_affinities(64, 0.2)


def test_3d_two_pass_segmentation_matches_the_global_mutex_watershed(noisy_cube, tmp_path):
    gt, aff = noisy_cube
    _affinity_store(tmp_path / "vol.zarr", aff, (32, 32, 32))
    blockwise = zarr.open_array(segment_blockwise(tmp_path / "vol.zarr", (32, 32, 32), num_workers=2))[:]  # 8 blocks
    whole = segment(aff.astype(np.float32) / 255.0, DEFAULT_OFFSETS_3D)
    (vb, ab), (vg, ag) = _scores(blockwise, gt), _scores(whole, gt)
    assert abs(vb - vg) <= 0.05 and abs(ab - ag) <= 0.01, ((vb, ab), (vg, ag))
    # instances cross block faces: the largest body spans several blocks under one id
    ids, counts = np.unique(blockwise, return_counts=True)
    big = ids[np.argmax(counts)]
    zz, yy, xx = np.nonzero(blockwise == big)
    assert len({(z // 32, y // 32, x // 32) for z, y, x in zip(zz, yy, xx)}) > 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A real PostgreSQL server of this machine (Debian's postgresql package; .ci/run installs it), started on a
    free loopback port in a fresh folder, as the ``postgres`` user when run as root; stopped and removed afterwards."""
    import tempfile

    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin")) if Path("/usr/lib/postgresql").exists() else []
    initdb = shutil.which("initdb") or (str(bindir[-1] / "initdb") if bindir else None)
    if not initdb:
        pytest.skip("no PostgreSQL server installed (apt-get install postgresql); .ci/run installs it")
    pg_ctl = str(Path(initdb).parent / "pg_ctl")
    home = Path(tempfile.mkdtemp(prefix="monai_denoiseg_pg."))  # outside pytest's root-only tmp tree
    data, port = home / "data", _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        home.chmod(0o777)
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "volara", "--auth=trust"], check=True,
                       capture_output=True)
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1",
                        "-w", "-t", "60", "-l", str(home / "server.log"), "start"], check=True, capture_output=True)
        yield {"db_type": "postgresql", "host": "127.0.0.1", "port": port, "name": "fragments", "user": "volara"}
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_postgresql_graph_gives_the_sqlite_answer(noisy_cube, postgres, tmp_path):
    gt, aff = noisy_cube
    for name in ("sqlite", "postgres"):
        _affinity_store(tmp_path / name / "vol.zarr", aff, (32, 32, 32))
    sqlite = zarr.open_array(segment_blockwise(tmp_path / "sqlite" / "vol.zarr", (32, 32, 32)))[:]
    pg = zarr.open_array(segment_blockwise(tmp_path / "postgres" / "vol.zarr", (32, 32, 32), db=postgres))[:]
    assert not (tmp_path / "postgres" / "vol.blockwise" / "fragments.db").exists()  # the graph went to the server
    assert _same_partition(sqlite, pg) and len(np.unique(pg)) > 10


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_clearly(isbi_stack, tmp_path):
    src, raw = isbi_stack
    net = _net()
    kw = dict(roi_size=(128, 128), block_shape=(2, 96, 96), num_workers=1, pyramid_levels=0)
    with pytest.raises(FileNotFoundError, match="nope.zarr"):
        run_blockwise(net, tmp_path / "nope.zarr", tmp_path / "o1", "raw", **kw)
    group = zarr.open_group(tmp_path / "vol.zarr", mode="w")
    group.create_array("raw", data=raw)
    group.create_array("flat", data=raw[0])
    group.create_array("float", data=raw.astype(np.float32) / 127.5)  # 0-2: outside a declared (0, 1)
    with_nan = raw.astype(np.float32)
    with_nan[3, 300, 10] = np.nan  # in the last block only
    group.create_array("nan", data=with_nan)
    with pytest.raises(KeyError, match=r"'rwa'.*raw"):
        run_blockwise(net, tmp_path / "vol.zarr", tmp_path / "o2", "rwa", **kw)
    with pytest.raises(ValueError, match=r"\(Z, Y, X\).*\(320, 352\)"):
        run_blockwise(net, tmp_path / "vol.zarr", tmp_path / "o3", "flat", **kw)
    with pytest.raises(ValueError, match="float32.*intensity_range"):
        run_blockwise(net, tmp_path / "vol.zarr", tmp_path / "o4", "float", **kw)
    with pytest.raises(BlockwiseError, match=r"vol.zarr\[float\] block .* outside the declared intensity_range"):
        run_blockwise(net, tmp_path / "vol.zarr", tmp_path / "o5", "float", intensity_range=(0, 1), **kw)
    with pytest.raises(BlockwiseError, match=r"vol.zarr\[nan\] block .*NaN"):
        run_blockwise(net, tmp_path / "vol.zarr", tmp_path / "o7", "nan", intensity_range=(0, 255), **kw)
    with pytest.raises(ValueError, match="block_shape.*stride"):
        run_blockwise(net, tmp_path / "vol.zarr", tmp_path / "o6", "raw", **{**kw, "block_shape": (2, 50, 50)})
    cut = tmp_path / "cut.tif"  # a TIFF stack cut short: opens, fails when its last pages are read
    tifffile.imwrite(cut, raw)
    os.truncate(cut, cut.stat().st_size * 3 // 4)
    with pytest.raises(BlockwiseError, match=r"cut.tif.* block .*truncated or corrupt"):
        run_blockwise(net, cut, tmp_path / "o8", **kw)
    with pytest.raises(ValueError, match=r"voxel_size.*\(4, 4\)"):
        run_blockwise(net, src, tmp_path / "o9", voxel_size=(4, 4), **kw)
    with pytest.raises(ValueError, match="overwrite the input"):
        run_blockwise(net, tmp_path / "vol.zarr", tmp_path, "raw", **kw)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("o")) in ([], ["o5"], ["o5", "o7"], ["o5", "o7", "o8"])


def test_open_volume_reads_every_format_lazily(isbi_stack, tmp_path):
    _, raw = isbi_stack
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("volumes/raw", data=raw, chunks=(1, 64, 64))
        f["volumes/raw"].attrs["resolution"] = (50, 4, 4)
    arrays = {"h5": open_volume(tmp_path / "v.h5", "volumes/raw")}
    tifffile.imwrite(tmp_path / "v.tif", raw)
    arrays["tif"] = open_volume(tmp_path / "v.tif")
    zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2).create_array("raw", data=raw, chunks=(1, 64, 64))
    arrays["zarr2"] = open_volume(tmp_path / "v2.zarr", "raw")
    ome = zarr.open_group(tmp_path / "ome.zarr", mode="w")
    ome.create_array("0", data=raw, chunks=(1, 64, 64))
    ome.attrs["ome"] = {"version": "0.5", "multiscales": [{"datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [50.0, 4.0, 4.0]}]}]}]}
    arrays["ome"] = open_volume(tmp_path / "ome.zarr")
    import nibabel as nib

    nib.save(nib.Nifti1Image(raw.T.copy(), np.diag([4.0, 4.0, 50.0, 1.0])), tmp_path / "v.nii.gz")
    arrays["nii"] = open_volume(tmp_path / "v.nii.gz")
    from funlib.geometry import Coordinate, Roi

    for name, arr in arrays.items():
        assert tuple(arr.shape) == raw.shape, name
        if name in ("h5", "ome", "nii"):
            assert tuple(arr.voxel_size) == (50, 4, 4), name
        roi = Roi((1, 8, 16), (2, 40, 24)) * Coordinate(arr.voxel_size)  # voxels -> world units
        np.testing.assert_array_equal(arr.to_ndarray(roi), raw[1:3, 8:48, 16:40], err_msg=name)


def test_input_format_exports_only_for_volumes_that_fit_in_memory(isbi_stack, tmp_path, monkeypatch):
    """HDF5/TIFF/NIfTI exports are written whole, so a volume over the limit stays OME-Zarr only."""
    from monai_denoiseg.engines import inference

    src, _ = isbi_stack
    kw = dict(roi_size=(128, 128), block_shape=(4, 192, 192), num_workers=1, pyramid_levels=0)
    small = inference.run_inference(_net(), src, tmp_path / "small", None, "joint", PAPER_OFFSETS_2D, **kw)
    assert small["denoised_export"].is_file() and small["instances_export"].is_file()
    np.testing.assert_array_equal(tifffile.imread(small["denoised_export"]), zarr.open_array(small["denoised"])[:])
    monkeypatch.setattr(inference, "EXPORT_MAX_VOXELS", 4 * 320 * 352 - 1)
    large = inference.run_inference(_net(), src, tmp_path / "large", None, "joint", PAPER_OFFSETS_2D, **kw)
    assert "denoised_export" not in large and not list((tmp_path / "large").glob("*.tif"))
    assert zarr.open_array(large["instances"]).shape == (4, 320, 352)


def test_a_denoiser_alone_writes_the_denoised_image_only_and_seg_only_is_refused(isbi_stack, tmp_path):
    """dn_only / n2v_only predict no affinities: no segmentation tasks, no label image (they used to fail in the
    workers asking for ``affinity_prob``); seg_only predicts no image, refused before anything is written."""
    from monai_denoiseg.engines import inference

    src, raw = isbi_stack
    kw = dict(roi_size=(128, 128), block_shape=(4, 192, 192), num_workers=1, pyramid_levels=0)
    out = inference.run_inference(_net(), src, tmp_path / "dn", None, "n2v_only", PAPER_OFFSETS_2D, **kw)
    assert set(out) == {"zarr", "denoised", "denoised_export"}
    group = zarr.open_group(out["zarr"], mode="r")
    assert "labels" not in group and "affinities" not in group and group["s0"].shape == raw.shape
    with pytest.raises(ValueError, match=r"'seg_only'.*predicts no denoised image"):
        inference.run_inference(_net(), src, tmp_path / "seg", None, "seg_only", PAPER_OFFSETS_2D, **kw)
    assert not (tmp_path / "seg").exists()
