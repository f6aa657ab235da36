"""MONAI Model Zoo distribution helpers: package a bundle as a release zip, check its metadata offline,
and load its network from a YAML config.

The Model Zoo's rules (release zip ``<name>_v<version>.zip`` with top folder ``<name>/``; ``LICENSE``
and ``configs/metadata.json`` required; the version listed in the metadata ``changelog``; no file
over 25 MB except weights, which ``large_files.yml`` lists) are checked here before anything is
written, so that a bad release fails on the developer's machine, not in the Model Zoo's CI.

``monai.bundle.verify_metadata`` downloads the schema its metadata names; ``verify_bundle_metadata``
hands it a local copy so that it never does. ``monai.bundle.load(model=None)`` only builds the
network from ``configs/<workflow_type>.json`` (a YAML-only bundle gets a bare state dict back), and
with ``model=...`` it copies weights leniently (keys or shapes that differ are skipped without an
error); ``load_bundle_network`` parses the YAML config and loads the weights strictly.

Command line::

    python -m monai_denoiseg.bundle package bundles/medulla_fibsem_denoiseg --out dist
    python -m monai_denoiseg.bundle verify bundles/medulla_fibsem_denoiseg
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "package_bundle",
    "verify_bundle_metadata",
    "load_bundle_network",
    "bundle_parser",
    "default_schema_path",
    "read_bundle_metadata",
    "MAX_FILE_BYTES",
    "SCHEMA_ENV",
]

logger = logging.getLogger(__name__)

PathLike = str | Path
SCHEMA_ENV = "MONAI_DENOISEG_META_SCHEMA"
DEFAULT_SCHEMA_NAME = "meta_schema_20240725.json"
KNOWN_SCHEMA_MD5 = {DEFAULT_SCHEMA_NAME: "06954cad2cc5d3784e72077ac76f0fc8"}
MAX_FILE_BYTES = 25 * 1024 * 1024  # Model Zoo rule: larger files go in large_files.yml (weights excepted)
BUNDLE_ENTRIES = ("configs", "docs", "scripts", "LICENSE", "large_files.yml", "models")
SKIP_DIRS = frozenset({"__pycache__", "outputs", "eval", "runs", ".ipynb_checkpoints", ".git"})
SKIP_SUFFIXES = (".pyc", ".pyo")


def _metadata_file(bundle_dir: Path) -> Path:
    meta = bundle_dir / "configs" / "metadata.json"
    if not meta.is_file():
        raise ValueError(f"bundle_dir: expected a Model Zoo bundle with configs/metadata.json, got none in {str(bundle_dir)!r}.")
    return meta


def read_bundle_metadata(bundle_dir: PathLike) -> dict[str, Any]:
    """``configs/metadata.json`` of a bundle as a dict (ValueError naming the file when absent or not JSON)."""
    meta = _metadata_file(Path(bundle_dir).expanduser())
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{meta}: not valid JSON ({e}).") from e
    if not isinstance(data, dict):
        raise ValueError(f"{meta}: expected a JSON object, got {type(data).__name__}.")
    return data


def _release_files(bundle_dir: Path, include_weights: bool) -> list[Path]:
    """Files that go into the release, relative to ``bundle_dir``, in a stable order."""
    files: list[Path] = []
    for entry in BUNDLE_ENTRIES:
        if entry == "models" and not include_weights:
            continue
        path = bundle_dir / entry
        if path.is_file():
            files.append(Path(entry))
        elif path.is_dir():
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
                for name in sorted(names):
                    if name.startswith(".") or name.endswith(SKIP_SUFFIXES):
                        continue
                    files.append((Path(folder) / name).relative_to(bundle_dir))
    return files


def _large_file_paths(bundle_dir: Path) -> set[str]:
    path = bundle_dir / "large_files.yml"
    if not path.is_file():
        return set()
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {str(item.get("path", "")).removeprefix("./") for item in data.get("large_files", []) if isinstance(item, dict)}


def package_bundle(bundle_dir: PathLike, out_dir: PathLike, include_weights: bool = True) -> Path:
    """Write the Model Zoo release zip ``out_dir/<name>_v<version>.zip`` of ``bundle_dir``; return its path.

    ``name`` is the bundle folder's name and ``version`` comes from ``configs/metadata.json``; the
    zip's top folder is ``<name>/``, holding configs/, docs/, scripts/, LICENSE, large_files.yml and,
    if ``include_weights``, models/ (``__pycache__``, outputs/, eval/, runs/ and hidden files are
    skipped, as is everything else at the top, such as data/). Raises ``ValueError`` when LICENSE or
    the metadata is missing, the version is not in the changelog, or a file outside models/ is over
    25 MB. The zip is written under a temporary name and renamed when complete.
    """
    bundle_dir = Path(bundle_dir).expanduser().resolve()
    if not bundle_dir.is_dir():
        raise ValueError(f"bundle_dir: expected a folder, got {str(bundle_dir)!r}.")
    name = bundle_dir.name
    meta = read_bundle_metadata(bundle_dir)
    if not (bundle_dir / "LICENSE").is_file():
        raise ValueError(f"LICENSE: the Model Zoo requires a LICENSE file in the bundle, none in {str(bundle_dir)!r}.")
    version = meta.get("version")
    if not isinstance(version, str) or not version:
        raise ValueError(f"version: expected a version string in {name}/configs/metadata.json, got {version!r}.")
    changelog = meta.get("changelog")
    if not isinstance(changelog, dict) or version not in changelog:
        listed = sorted(changelog) if isinstance(changelog, dict) else changelog
        raise ValueError(
            f"changelog: version {version!r} of {name}/configs/metadata.json must be listed in its 'changelog', "
            f"got entries {listed!r}."
        )

    files = _release_files(bundle_dir, include_weights)
    large = _large_file_paths(bundle_dir)
    for rel in files:
        size = (bundle_dir / rel).stat().st_size
        if size <= MAX_FILE_BYTES:
            continue
        if rel.parts[0] != "models":
            raise ValueError(
                f"{rel.as_posix()}: {size / 2**20:.1f} MB is over the Model Zoo's {MAX_FILE_BYTES // 2**20} MB limit "
                "per file; only weights under models/ may be larger (list them in large_files.yml)."
            )
        if rel.as_posix() not in large:
            warnings.warn(f"{rel.as_posix()}: {size / 2**20:.1f} MB and not listed in large_files.yml.", stacklevel=2)

    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}_v{version}.zip"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel in files:
                zf.write(bundle_dir / rel, arcname=f"{name}/{rel.as_posix()}")
        os.replace(tmp_name, out)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    logger.info("packaged %d files of %s into %s", len(files), name, out)
    return out


def default_schema_path() -> Path:
    """Local copy of the Model Zoo metadata schema: ``$MONAI_DENOISEG_META_SCHEMA``, else
    ``<repo>/../shared/monai/meta_schema_20240725.json``."""
    env = os.environ.get(SCHEMA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "monai" / DEFAULT_SCHEMA_NAME


def _all_schema_errors(metadata: dict, schema_path: Path) -> list[str]:
    """Every validation error (MONAI reports only the first), as 'path: message'."""
    import jsonschema

    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(metadata), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in errors]


def verify_bundle_metadata(bundle_dir: PathLike, schema_path: PathLike | None = None) -> None:
    """Validate ``configs/metadata.json`` against the Model Zoo schema offline; ``ValueError`` listing every problem.

    Calls ``monai.bundle.verify_metadata`` with ``filepath`` set to a local copy of the schema (see
    ``default_schema_path``), which MONAI then uses instead of downloading it. The metadata's
    ``schema`` URL must name that file; the copy is md5-checked when its name is a known schema.
    """
    from monai.bundle import verify_metadata

    bundle_dir = Path(bundle_dir).expanduser()
    meta_file = _metadata_file(bundle_dir)
    metadata = read_bundle_metadata(bundle_dir)
    schema = Path(schema_path).expanduser() if schema_path is not None else default_schema_path()
    url = metadata.get("schema")
    if not isinstance(url, str) or not url:
        raise ValueError(f"schema: expected the URL of the metadata schema in {meta_file}, got {url!r}.")
    url_name = Path(urlparse(url).path).name
    if not schema.is_file():
        raise FileNotFoundError(
            f"schema_path: no local copy of the metadata schema at {str(schema)!r} (checking offline); "
            f"download {url} there, or set {SCHEMA_ENV} to a copy of {url_name!r}."
        )
    if url_name != schema.name:
        raise ValueError(
            f"schema: {meta_file} names the schema {url_name!r} ({url}), but the local copy is {schema.name!r}; "
            f"pass schema_path (or set {SCHEMA_ENV}) to a copy of {url_name!r}."
        )
    md5 = KNOWN_SCHEMA_MD5.get(schema.name)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No hash value provided")
            verify_metadata(meta_file=str(meta_file), filepath=str(schema), hash_val=md5, hash_type="md5")
    except ValueError as e:
        problems = _all_schema_errors(metadata, schema) or [str(e)]
        raise ValueError(
            f"{meta_file}: {len(problems)} problem(s) against the schema {schema.name}: " + "; ".join(problems) + "."
        ) from e


def bundle_parser(bundle_dir: PathLike, config: str | Sequence[str] = "inference.yaml",
                  overrides: dict[str, Any] | None = None):
    """A ``ConfigParser`` of the bundle's config files (``configs/<config>``, one or a list, merged in order) and
    its metadata, ``bundle_root`` set to ``bundle_dir`` when the config defines it, then ``overrides`` applied."""
    from monai.bundle import ConfigParser

    bundle_dir = Path(bundle_dir).expanduser()
    names = [config] if isinstance(config, str) else list(config)
    files = [bundle_dir / "configs" / n for n in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"config: no such config file(s) {missing} in the bundle {str(bundle_dir)!r}.")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    if (bundle_dir / "configs" / "metadata.json").is_file():
        parser.read_meta(str(bundle_dir / "configs" / "metadata.json"))
    if "bundle_root" in parser:
        parser["bundle_root"] = str(bundle_dir)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def load_bundle_network(
    bundle_dir: PathLike,
    config: str | Sequence[str] = "inference.yaml",
    weights: str | None = "models/model.pt",
    net_id: str = "network_def",
    device: str = "cpu",
    key_in_ckpt: str | None = None,
    strict: bool = True,
    overrides: dict[str, Any] | None = None,
):
    """Build ``net_id`` from the bundle's (YAML or JSON) config and load its weights strictly.

    ``config`` names files under ``configs/`` (one or a list, merged in order), ``weights`` a state
    dict relative to the bundle (None: no weights); ``bundle_root`` is set to ``bundle_dir`` when the
    config defines it, and ``overrides`` (config ids to values, e.g. ``{"network_def#features": ...}``)
    are applied before parsing. Only ``net_id`` and what it refers to are instantiated. Parsing runs
    the config's expressions (``$...``, ``_target_``): load bundles from trusted sources only; the
    weights are read with ``torch.load(weights_only=True)``.
    """
    import torch

    bundle_dir = Path(bundle_dir).expanduser()
    parser = bundle_parser(bundle_dir, config, overrides)
    if net_id not in parser:
        raise ValueError(f"net_id: no {net_id!r} in {config!r} of {str(bundle_dir)!r}.")
    net = parser.get_parsed_content(net_id, instantiate=True)
    if not isinstance(net, torch.nn.Module):
        raise ValueError(f"{net_id}: expected the config to build a torch.nn.Module, got {type(net).__name__}.")
    if weights is not None:
        path = bundle_dir / weights
        if not path.is_file():
            raise ValueError(f"weights: no such file {str(path)!r} in the bundle.")
        state = torch.load(path, map_location=device, weights_only=True)
        if key_in_ckpt is not None:
            if not isinstance(state, dict) or key_in_ckpt not in state:
                keys = list(state)[:10] if isinstance(state, dict) else type(state).__name__
                raise ValueError(f"key_in_ckpt: no {key_in_ckpt!r} in {path.name}, got keys {keys}.")
            state = state[key_in_ckpt]
        net.load_state_dict(state, strict=strict)
    return net.to(device)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_denoiseg.bundle package|verify <bundle_dir> [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m monai_denoiseg.bundle", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pkg = sub.add_parser("package", help="write <name>_v<version>.zip (Model Zoo release layout)")
    pkg.add_argument("bundle_dir")
    pkg.add_argument("--out", default="dist", help="output folder (default: dist)")
    pkg.add_argument("--no-weights", action="store_true", help="leave models/ out of the zip")
    ver = sub.add_parser("verify", help="validate configs/metadata.json against the Model Zoo schema, offline")
    ver.add_argument("bundle_dir")
    ver.add_argument("--schema", default=None, help=f"local schema file (default: ${SCHEMA_ENV} or ../shared/monai/)")
    args = parser.parse_args(argv)
    try:
        if args.command == "package":
            print(package_bundle(args.bundle_dir, args.out, include_weights=not args.no_weights))
        else:
            verify_bundle_metadata(args.bundle_dir, args.schema)
            print(f"{args.bundle_dir}: metadata is valid")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
