"""``python -m monai_denoiseg.bioimageio export --bundle DIR --checkpoint model.pt --test-input FILE --output pkg.zip``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_denoiseg.bioimageio",
                                     description="Write a bundle's network as a bioimage.io model package (spec 0.5).")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a bioimage.io model package zip")
    ex.add_argument("--bundle", required=True, help="the bundle folder, e.g. bundles/medulla_fibsem_denoiseg")
    ex.add_argument("--checkpoint", required=True, help="state dict of network_def (the bundle's models/model.pt)")
    ex.add_argument("--output", required=True, help="the package zip to write")
    ex.add_argument("--test-input", required=True,
                    help="image file (.h5/.tif/.npy, uint8) from which a real crop becomes the test input")
    ex.add_argument("--test-key", default=None, help="HDF5 dataset (default: the config's raw_key)")
    ex.add_argument("--test-shape", type=int, nargs="+", default=None,
                    help="crop size, multiples of the network's (default 64 64; 16 64 64 in 3-D)")
    ex.add_argument("--test-start", type=int, nargs="+", default=None, help="crop corner (default: centred)")
    ex.add_argument("--test-z", type=int, default=None, help="slice of a volume for a 2-D network (default: middle)")
    ex.add_argument("--config", nargs="+", default=["train.yaml"],
                    help="config files under configs/, merged in order (3-D: train.yaml train_3d.yaml)")
    ex.add_argument("--net-id", default="export_network_def")
    ex.add_argument("--key-in-ckpt", default=None)
    ex.add_argument("--override", action="append", default=[], metavar="ID=JSON",
                    help='config override, e.g. --override \'features=[8,16,32,64]\' (repeatable)')
    ex.add_argument("--name", default=None)
    ex.add_argument("--license", default="Apache-2.0", help="SPDX id of the package (default: Apache-2.0)")
    args = parser.parse_args(argv)

    overrides = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--override: expected ID=JSON, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    from monai_denoiseg.bioimageio.export import export_bioimageio_package

    try:
        out = export_bioimageio_package(
            args.bundle, args.checkpoint, args.output, args.test_input, config=args.config, net_id=args.net_id,
            key_in_ckpt=args.key_in_ckpt, overrides=overrides, test_key=args.test_key, test_shape=args.test_shape,
            test_start=args.test_start, test_z=args.test_z, name=args.name, license=args.license)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
