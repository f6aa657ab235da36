"""Write a bundle's trained export network as a bioimage.io model package (spec 0.5).

See :func:`export_bioimageio_package` and docs/bioimageio.md. Everything runs offline: the package's
files are written to a temporary folder, described with ``bioimageio.spec`` (IO checks on: the test
tensors' shapes and the documentation are read back) and zipped with ``save_bioimageio_package``.
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_denoiseg.bundle.release import bundle_parser

__all__ = ["export_bioimageio_package", "resolve_config", "load_test_image", "CITATIONS"]

logger = logging.getLogger(__name__)

PathLike = str | Path

# the two papers whose methods the bundles implement (titles and authors as published)
CITATIONS = {
    "instance_aware": {
        "text": "Wang Z, Li J, Chen Y, Shou J, Deng S, Huang W, Xiong Z. Joint EM Image Denoising and Segmentation "
                "with Instance-aware Interaction. MICCAI 2024.",
        "url": "https://github.com/zhichengwang-tri/EM-DenoiSeg",
    },
    "semantic_tasks": {
        "text": "Zhu T, Guan Y. Joint Optical Neuroimaging Denoising with Semantic Tasks (Noise2Void denoiser and "
                "segmenter trained end to end; EM experiment on Lucchi++).",
        # no DOI or preprint address is known to us: a literature search for the exact title
        "url": "https://scholar.google.com/scholar?q=%22Joint+Optical+Neuroimaging+Denoising+with+Semantic+Tasks%22",
    },
    "noise2void": {
        "text": "Krull A, Buchholz TO, Jug F. Noise2Void - Learning Denoising from Single Noisy Images. CVPR 2019.",
        "doi": "10.1109/CVPR.2019.00223",
    },
}


def _cite_entry(text: str, url: str | None = None) -> dict:
    """A bioimage.io citation (it needs a DOI or URL): ``url``, else a literature search for ``text``."""
    from urllib.parse import quote_plus

    return {"text": text, "url": url or "https://scholar.google.com/scholar?q=" + quote_plus(text)}


# ------------------------------------------------------------------------------------------------ config
def _plain(value: Any, where: str) -> Any:
    """``value`` as YAML-able plain data (tuples -> lists, numpy scalars -> Python); ValueError otherwise."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    raise ValueError(
        f"{where}: resolves to a {type(value).__name__}, not plain data; the bioimage.io architecture kwargs must be "
        "YAML values (numbers, strings, lists, dicts with _target_)."
    )


def resolve_config(parser, node: Any, where: str = "network_def") -> Any:
    """``node`` (raw config of a MONAI ``ConfigParser``) with every ``@ref`` and ``$expression`` evaluated.

    A reference to a component (a dict with ``_target_``) is inlined as its own resolved config, so the result
    is a tree of plain values and ``{"_target_": ..., **kwargs}`` dicts that
    :func:`monai_denoiseg.bioimageio.architecture.instantiate_plain` builds without MONAI's expression evaluator.
    """
    if isinstance(node, dict):
        return {k: (v if k == "_target_" else resolve_config(parser, v, f"{where}#{k}")) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [resolve_config(parser, v, f"{where}#{i}") for i, v in enumerate(node)]
    if isinstance(node, str) and node.startswith("@"):
        ref = node[1:]
        if ref.startswith("#") or ref not in parser:
            raise ValueError(f"{where}: cannot resolve the reference {node!r} (absolute ids only).")
        raw = parser.get(ref)
        if isinstance(raw, dict) and "_target_" in raw:
            return resolve_config(parser, raw, ref)
        return resolve_config(parser, raw, ref) if isinstance(raw, (dict, list)) else _evaluate(parser, node, where)
    if isinstance(node, str) and (node.startswith("$") or node.startswith("%")):
        return _evaluate(parser, node, where)
    return _plain(node, where)


def _evaluate(parser, expr: str, where: str) -> Any:
    tmp = "_bioimageio_export_tmp_"
    parser[tmp] = expr
    try:
        return _plain(parser.get_parsed_content(tmp, instantiate=True), where)
    finally:
        parser.config.pop(tmp, None)
        parser.ref_resolver.reset()


def _load_state(checkpoint: Path, key_in_ckpt: str | None) -> dict:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if key_in_ckpt is not None:
        if not isinstance(state, dict) or key_in_ckpt not in state:
            raise ValueError(f"key_in_ckpt: no {key_in_ckpt!r} in {checkpoint.name}.")
        state = state[key_in_ckpt]
    elif isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("network", "model", "state_dict"):  # a CheckpointSaver save_dict
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise ValueError(f"checkpoint: expected a state dict in {str(checkpoint)!r}, got {type(state).__name__}.")
    return state


# ------------------------------------------------------------------------------------------------ test image
def load_test_image(path: PathLike, key: str | None, shape: Sequence[int], start: Sequence[int] | None = None,
                    z: int | None = None) -> np.ndarray:
    """A uint8 crop of ``shape`` (2 or 3 axes) from an image file: .npy, .tif/.tiff, or HDF5 (``key``).

    A 2-D crop of a volume is taken from slice ``z`` (default the middle one). ``start`` is the crop's corner
    (default centred). Other dtypes are refused: the package's input is uint8 EM intensity (scaled by 1/255).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"test_input: no such file {str(path)!r}.")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf"):
        import h5py

        with h5py.File(path, "r") as f:
            if not key or key not in f:
                raise ValueError(f"test_key: expected a dataset of {path.name}, got {key!r}.")
            arr = _crop(f[key], shape, start, z)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        arr = _crop(tifffile.imread(path), shape, start, z)
    elif suffix == ".npy":
        arr = _crop(np.load(path, mmap_mode="r"), shape, start, z)
    else:
        raise ValueError(f"test_input: expected .npy, .tif(f) or .h5 file, got {path.name!r}.")
    if arr.dtype != np.uint8:
        raise ValueError(f"test_input: expected uint8 EM intensities, got {arr.dtype} in {path.name}.")
    return np.ascontiguousarray(arr)


def _crop(vol, shape: Sequence[int], start: Sequence[int] | None, z: int | None) -> np.ndarray:
    shape = [int(s) for s in shape]
    if len(shape) == 2 and len(vol.shape) == 3:
        zi = vol.shape[0] // 2 if z is None else int(z)
        if not 0 <= zi < vol.shape[0]:
            raise ValueError(f"test_z: {zi} outside the volume's {vol.shape[0]} slices.")
        vol = vol[zi]
    if len(vol.shape) != len(shape):
        raise ValueError(f"test_shape: {shape} does not fit an image of shape {tuple(vol.shape)}.")
    if any(s > v for s, v in zip(shape, vol.shape)):
        raise ValueError(f"test_shape: {shape} is larger than the image {tuple(vol.shape)}.")
    start = [(v - s) // 2 for s, v in zip(shape, vol.shape)] if start is None else [int(s) for s in start]
    return np.asarray(vol[tuple(slice(a, a + s) for a, s in zip(start, shape))])


# ------------------------------------------------------------------------------------------------ files
def _cover(image: np.ndarray, pred: np.ndarray, path: Path) -> None:
    """2:1 PNG: the test input | the denoised image tinted by the mean segmentation probability."""
    from PIL import Image

    if image.ndim == 3:  # 3-D: the middle slice
        image, pred = image[image.shape[0] // 2], pred[:, pred.shape[1] // 2]
    gray = image.astype(np.float32) / 255.0
    lo, hi = np.percentile(pred[0], [1, 99])  # display stretch: an early checkpoint's image may be off-range
    den = np.clip((pred[0] - lo) / max(float(hi - lo), 1e-6), 0, 1)
    prob = np.clip(pred[1:].mean(0), 0, 1) if pred.shape[0] > 1 else np.zeros_like(den)
    left = np.stack([gray] * 3, -1)
    right = np.stack([np.maximum(den, prob), den * (1 - 0.6 * prob), den * (1 - 0.6 * prob)], -1)
    rgb = (np.concatenate([left, right], axis=1) * 255).round().astype(np.uint8)
    img = Image.fromarray(rgb)
    scale = max(1, 256 // rgb.shape[0])
    img.resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST).save(path)


def _environment(path: Path, torch_version: str) -> None:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist in ("monai-denoiseg", "monai"):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            pins.append(dist)
    text = ["name: monai-denoiseg", "channels:", "  - conda-forge", "dependencies:", "  - python>=3.10",
            f"  - pytorch=={torch_version}", "  - pip", "  - pip:", *[f"    - {p}" for p in pins], ""]
    path.write_text("\n".join(text), encoding="utf-8")


def _documentation(meta: dict, *, name: str, strategy: str, spatial_dims: int, axes: str, multiple: list[int],
                   channels: list[str], test_shape: Sequence[int], licence_text: str, bundle_readme: str | None,
                   config_names: Sequence[str], citations: list[dict]) -> str:
    sizes = " x ".join(f"{m}*n" for m in multiple)
    rows = "\n".join(f"| {i} | {c} |" for i, c in enumerate(channels))
    cites = "\n".join(f"- {c['text']} {c.get('doi') and 'doi:' + c['doi'] or c.get('url', '')}" for c in citations)
    refs = "\n".join(f"- {r}" for r in meta.get("references", []))
    instances = (
        "Instances: run the mutex watershed on the affinity channels "
        "(`monai_denoiseg.transforms.AffinityToInstances` with the offsets above)."
        if len(channels) > 2 or "affinity" in channels[-1] else
        "Mitochondria mask: threshold the probability channel at 0.5."
    )
    doc = f"""# {name}

{meta.get("description", "")}

Task: {meta.get("task", "")}. Exported from the MONAI bundle `{meta.get("name", "")}` (version
{meta.get("version", "")}, configs {", ".join(config_names)}, strategy `{strategy}`, {spatial_dims}-D) with
`python -m monai_denoiseg.bioimageio export`.

## Input

One tensor `raw`, axes `{axes}`: single-channel EM intensities, **uint8** (0-255), as acquired: the model
was trained on noisy images. Preprocessing (in the package): cast to float32 and scale by 1/255 to the
training range [0, 1]. Spatial sizes: any multiple of {multiple} per axis ({sizes}); the network pads other
sizes itself, but tiling tools should use these. The test tensor is a real {tuple(test_shape)} crop of the
training data.

## Output

One tensor `prediction`, axes `{axes}`, float32, the input's spatial size, channels in this order:

| channel | content |
|---|---|
{rows}

{instances}

## Validation

The bundle evaluates on its held-out test split (`python -m monai.bundle run evaluating --config_file
"['configs/train.yaml','configs/evaluate.yaml']"` in the bundle): VOI and adapted Rand error of the instances
(affinity bundles) or IoU and F1 of the mask, PSNR and SSIM of the denoised image against the clean volume.
The package's test output was computed by this network on the test input at export time; `bioimageio test`
reproduces it. Reported metric: {json.dumps(meta.get("eval_metrics", {}))}.

## Training data

{meta.get("data_source", "")}. {meta.get("image_classes", "")}; labels: {meta.get("label_classes", "")}.

## Intended use

{meta.get("intended_use", "")}

## Citations

{cites}

Further references of the bundle:

{refs}

## Licence

Package licence (code, configuration, weights): see `license` in rdf.yaml. The bundle's LICENSE, with the
terms of the training data:

```
{licence_text.strip()}
```
"""
    if bundle_readme:
        doc += "\n## The bundle's documentation\n\n" + bundle_readme.replace("\n# ", "\n### ").lstrip("# ") + "\n"
    return doc


# ------------------------------------------------------------------------------------------------ export
def export_bioimageio_package(
    bundle: PathLike,
    checkpoint: PathLike,
    output: PathLike,
    test_input: PathLike,
    *,
    config: str | Sequence[str] = "train.yaml",
    net_id: str = "export_network_def",
    key_in_ckpt: str | None = None,
    overrides: dict[str, Any] | None = None,
    test_key: str | None = None,
    test_shape: Sequence[int] | None = None,
    test_start: Sequence[int] | None = None,
    test_z: int | None = None,
    name: str | None = None,
    license: str = "Apache-2.0",
    authors: Sequence[str] | None = None,
) -> Path:
    """Write ``output`` (a .zip): the bioimage.io model package of ``bundle``'s export network with ``checkpoint``.

    Args:
        bundle: the bundle folder (``configs/``, ``LICENSE``, ``configs/metadata.json``).
        checkpoint: a state dict of ``network_def`` (what the bundle's CheckpointSaver writes) or of
            ``export_network_def``; loaded strictly.
        output: the zip to write.
        test_input: an image file (.npy, .tif, .h5 with ``test_key``, default the config's ``raw_key``) from which
            a real uint8 crop of ``test_shape`` becomes the package's test input (default: 64 x 64, or
            16 x 64 x 64 in 3-D; centred, slice ``test_z`` of a volume for a 2-D network).
        config: config file(s) under ``configs/``, merged in order (e.g. ``["train.yaml", "train_3d.yaml"]``).
        net_id: the config id of the one-tensor export network.
        overrides: config ids to values, applied before parsing (e.g. ``{"features": [8, 16, 32, 64]}``).
        name: the model's name (default: the bundle's, with "3D" for a 3-D network).
        license: SPDX id of the package (the bundle's code licence; the LICENSE attachment has the data terms).
        authors: author names (default: the metadata's ``authors``).
    """
    import torch
    from bioimageio.spec import ValidationContext, save_bioimageio_package
    from bioimageio.spec.model import v0_5 as S

    from monai_denoiseg.bioimageio.architecture import build_export_network
    from monai_denoiseg.networks import ExportNetwork

    bundle = Path(bundle).expanduser().resolve()
    checkpoint = Path(checkpoint).expanduser()
    output = Path(output).expanduser().resolve()
    if output.suffix != ".zip":
        raise ValueError(f"output: expected a .zip path, got {str(output)!r}.")
    if not checkpoint.is_file():
        raise ValueError(f"checkpoint: no such file {str(checkpoint)!r}.")
    configs = [config] if isinstance(config, str) else list(config)
    parser = bundle_parser(bundle, configs, overrides)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    licence_file = bundle / "LICENSE"
    if not licence_file.is_file():
        raise ValueError(f"LICENSE: none in the bundle {str(bundle)!r}.")
    if net_id not in parser:
        raise ValueError(f"net_id: no {net_id!r} in {configs} of {str(bundle)!r}.")

    # the network, its plain kwargs, and the checkpoint loaded strictly
    raw_export = parser.get(net_id)
    net = parser.get_parsed_content(net_id, instantiate=True)
    if not isinstance(net, ExportNetwork):
        raise ValueError(f"{net_id}: expected a monai_denoiseg.networks.ExportNetwork, got {type(net).__name__}.")
    net.load_state_dict(_load_state(checkpoint, key_in_ckpt), strict=True)
    net = net.cpu().eval()
    strategy = resolve_config(parser, raw_export.get("strategy"), f"{net_id}#strategy")
    strategy = None if strategy is None else str(strategy)
    kwargs = {
        "network_def": resolve_config(parser, raw_export["network"], f"{net_id}#network"),
        "strategy": strategy,
        "spatial_dims": int(net.spatial_dims),
        "in_channels": int(net.in_channels),
    }
    if net.in_channels != 1:
        raise ValueError(f"in_channels: the package describes single-channel EM input, got {net.in_channels}.")
    rebuilt = build_export_network(**kwargs)
    rebuilt.load_state_dict(net.state_dict(), strict=True)  # the kwargs rebuild the same architecture
    rebuilt.eval()

    dims = net.spatial_dims
    multiple = list(net.multiple)
    offsets = resolve_config(parser, parser.get("offsets"), "offsets") if "offsets" in parser else None
    binary = bool(resolve_config(parser, parser.get("binary"), "binary")) if "binary" in parser else offsets is None
    from monai_denoiseg.networks import export_channel_names

    channels = export_channel_names(None if binary else offsets, 1, foreground="mitochondria" if binary else "foreground")
    if test_key is None and "raw_key" in parser:
        raw_key = parser.get("raw_key")
        test_key = raw_key if isinstance(raw_key, str) and not raw_key.startswith(("$", "@")) else None
    shape = list(test_shape) if test_shape is not None else ([64, 64] if dims == 2 else [16, 64, 64])
    if len(shape) != dims or any(s % m for s, m in zip(shape, multiple)):
        raise ValueError(f"test_shape: expected {dims} sizes, multiples of {multiple}, got {shape}.")
    image = load_test_image(test_input, test_key, shape, test_start, test_z)

    x = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]
    with torch.no_grad():
        pred = net(x)
        if not torch.allclose(rebuilt(x), pred, atol=1e-5, rtol=1e-4):
            raise RuntimeError("the architecture kwargs rebuild a network that predicts differently.")
        scripted = torch.jit.script(net)
        scripted_pred = scripted(x)
    if tuple(pred.shape) != (1, len(channels), *shape):
        raise RuntimeError(f"{net_id}: expected an output of shape {(1, len(channels), *shape)}, got {tuple(pred.shape)}.")
    if not torch.allclose(scripted_pred, pred, atol=1e-4, rtol=1e-3):
        raise RuntimeError("the TorchScript export predicts differently from the network.")
    pred_np = pred.numpy().astype(np.float32)

    torch_version = torch.__version__.split("+")[0]
    space = ["z", "y", "x"][-dims:]
    axes_text = "b, c, " + ", ".join(space)
    model_name = name or (meta.get("name", bundle.name) + (" 3D" if dims == 3 else ""))
    binary_task = binary
    citations = [CITATIONS["instance_aware"], CITATIONS["semantic_tasks"], CITATIONS["noise2void"]]
    bundle_readme = bundle / "docs" / "README.md"
    with tempfile.TemporaryDirectory(prefix="bioimageio_export_") as tmp:
        root = Path(tmp)
        np.save(root / "test_input.npy", image[None, None])
        np.save(root / "test_output.npy", pred_np)
        torch.save(net.state_dict(), root / "weights.pt")
        torch.jit.save(scripted, str(root / "weights_torchscript.pt"))
        shutil.copyfile(Path(__file__).with_name("architecture.py"), root / "architecture.py")
        shutil.copyfile(licence_file, root / "LICENSE")
        _cover(image, pred_np[0], root / "cover.png")
        _environment(root / "environment.yaml", torch_version)
        (root / "README.md").write_text(_documentation(
            meta, name=model_name, strategy=str(strategy), spatial_dims=dims, axes=axes_text, multiple=multiple,
            channels=channels, test_shape=shape, licence_text=licence_file.read_text(encoding="utf-8"),
            bundle_readme=bundle_readme.read_text(encoding="utf-8") if bundle_readme.is_file() else None,
            config_names=configs, citations=citations), encoding="utf-8")

        in_axes = [S.BatchAxis(), S.ChannelAxis(channel_names=["raw"])] + [
            S.SpaceInputAxis(id=S.AxisId(a), size=S.ParameterizedSize(min=m, step=m))
            for a, m in zip(space, multiple)
        ]
        out_axes = [S.BatchAxis(), S.ChannelAxis(channel_names=channels)] + [
            S.SpaceOutputAxis(id=S.AxisId(a), size=S.SizeReference(tensor_id=S.TensorId("raw"), axis_id=S.AxisId(a)))
            for a in space
        ]
        what = ("the mitochondria probability" if binary_task else
                f"{len(channels) - 1} affinity probabilities, one per offset")
        out_description = (  # at most 128 characters: the channel names, the docs and config carry the details
            f"ch 0: denoised image; ch 1-{len(channels) - 1}: {what} (see channel names)"
            if len(channels) > 2 else f"ch 0: denoised image; ch 1: {what}"
        )[:128]
        inputs = [S.InputTensorDescr(
            id=S.TensorId("raw"),
            description="EM intensities, uint8, single channel (the noisy acquisition)",
            axes=in_axes,
            test_tensor=S.FileDescr(source=root / "test_input.npy"),
            data=S.IntervalOrRatioDataDescr(type="uint8", range=(0, 255)),
            preprocessing=[
                S.EnsureDtypeDescr(kwargs=S.EnsureDtypeKwargs(dtype="float32")),
                S.ScaleLinearDescr(kwargs=S.ScaleLinearKwargs(gain=1.0 / 255.0, offset=0.0)),
                # explicit: else the spec appends a cast back to the input's uint8 after the scaling
                S.EnsureDtypeDescr(kwargs=S.EnsureDtypeKwargs(dtype="float32")),
            ],
        )]
        outputs = [S.OutputTensorDescr(
            id=S.TensorId("prediction"),
            description=out_description,
            axes=out_axes,
            test_tensor=S.FileDescr(source=root / "test_output.npy"),
            data=S.IntervalOrRatioDataDescr(type="float32"),
        )]
        arch = S.ArchitectureFromFileDescr(source=root / "architecture.py", callable="build_export_network",
                                           kwargs=kwargs)
        weights = S.WeightsDescr(
            pytorch_state_dict=S.PytorchStateDictWeightsDescr(
                source=root / "weights.pt", architecture=arch, pytorch_version=S.Version(torch_version),
                dependencies=S.FileDescr(source=root / "environment.yaml")),
            torchscript=S.TorchscriptWeightsDescr(
                source=root / "weights_torchscript.pt", pytorch_version=S.Version(torch_version),
                parent="pytorch_state_dict"),
        )
        from bioimageio.spec.generic.v0_3 import Author, CiteEntry

        data_terms = (meta.get("copyright", "").split("Data:", 1)[-1]).strip()
        data_refs = [r for r in meta.get("references", []) if not any(k in r.lower() for k in _METHOD_KEYS)]
        training_data = S.DatasetDescr(
            name=f"{meta.get('name', bundle.name)} training data"[:128],
            description=f"{meta.get('data_source', '')}. Terms: {data_terms}."[:1024],
            authors=[Author(name=a) for a in (authors or [meta.get("authors", "monai-denoiseg contributors")])],
            cite=[CiteEntry(**_cite_entry(r)) for r in data_refs] or [CiteEntry(**_cite_entry(data_terms or model_name))],
            license=_data_licence(data_terms),
            source=_first_url(meta.get("data_source", "")),
        )
        tags = ["electron-microscopy", "denoising", "pytorch", "monai", f"{dims}d",
                "semantic-segmentation" if binary_task else "instance-segmentation"]
        if not binary_task:
            tags.append("affinities")
        if strategy and "n2v" in strategy:
            tags.append("noise2void")
        descr = S.ModelDescr(
            name=model_name,
            description=(meta.get("description") or meta.get("task", ""))[:1024],
            version=meta.get("version"),
            authors=[Author(name=a) for a in (authors or [meta.get("authors", "monai-denoiseg contributors")])],
            cite=[CiteEntry(**c) for c in citations],
            license=license,
            documentation=S.FileDescr(source=root / "README.md"),
            covers=[S.FileDescr(source=root / "cover.png")],
            attachments=[S.FileDescr(source=root / "LICENSE")],
            tags=tags,
            inputs=inputs,
            outputs=outputs,
            weights=weights,
            training_data=training_data,
            config=S.Config(**{"monai_denoiseg": {
                "bundle": meta.get("name", bundle.name), "bundle_version": meta.get("version"), "configs": configs,
                "strategy": strategy, "channels": channels, "offsets": None if binary_task else offsets,
                "spatial_multiple": multiple}}),
            timestamp=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0),
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        with ValidationContext(perform_io_checks=True):
            save_bioimageio_package(descr, output_path=output)
    logger.info("wrote %s", output)
    return output


_METHOD_KEYS = ("instance-aware", "noise2void", "mutex watershed", "joint optical")


def _data_licence(terms: str) -> str | None:
    """The SPDX id of the training data's licence when the bundle's metadata names one (CC BY x.y), else None."""
    import re

    m = re.search(r"CC[ -]BY(-SA|-NC|-ND)*[ -](\d\.\d)", terms or "")
    return None if m is None else "CC-BY" + (m.group(1) or "") + "-" + m.group(2)


def _first_url(text: str) -> str | None:
    import re

    m = re.search(r"https?://\S+", text or "")
    return m.group(0).rstrip(").,") if m else None
