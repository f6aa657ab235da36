"""BioImage Model Zoo (bioimage.io) export of the bundles' networks: a spec-0.5 model package that
bioimageio.core, deepImageJ, ilastik and napari run (see docs/bioimageio.md).

Command line::

    python -m monai_denoiseg.bioimageio export --bundle bundles/medulla_fibsem_denoiseg \\
        --checkpoint bundles/medulla_fibsem_denoiseg/models/model.pt \\
        --test-input ../shared/data/medulla_fibsem.h5 --output medulla.zip

Needs the optional extra ``pip install "monai-denoiseg[bioimageio]"`` (bioimageio.core, bioimageio.spec);
this module imports them only when a package is written.
"""

from monai_denoiseg.bioimageio.architecture import build_export_network
from monai_denoiseg.bioimageio.export import CITATIONS, export_bioimageio_package, load_test_image, resolve_config

__all__ = ["build_export_network", "export_bioimageio_package", "load_test_image", "resolve_config", "CITATIONS"]
