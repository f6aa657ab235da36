"""Everything about this toolkit's MONAI bundles in one place.

- :mod:`.config`: the helpers bundle configs call (``$monai_denoiseg.bundle.locate_data(...)``): bundle root,
  data location, the keys a strategy reads, the selection metric, the device.
- :mod:`.release`: Model Zoo distribution: the release zip, offline metadata check, strict loading
  (``python -m monai_denoiseg.bundle package|verify ...``).
"""

from .config import *  # noqa: F401,F403
from .config import __all__ as _config_all
from .release import *  # noqa: F401,F403
from .release import __all__ as _release_all

__all__ = [*_config_all, *_release_all]
