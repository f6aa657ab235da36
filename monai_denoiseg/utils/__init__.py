from .atomic import atomic_open, atomic_path, refuse_existing
from .validation import check_finite, check_instance_labels, check_offsets, check_same_spatial_shape, check_spatial_ndim
