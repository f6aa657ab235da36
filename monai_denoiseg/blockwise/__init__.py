"""Volumes of any size: blockwise, resumable denoising and segmentation on volara + daisy (``docs/scale.md``)."""

from .pipeline import output_root, run_blockwise, segment_blockwise
from .storage import open_volume, prepare_array, write_ome_metadata
from .tasks import DenoiSegPredict, Downsample, SliceInstances, register_network

__all__ = [
    "run_blockwise", "segment_blockwise", "output_root", "open_volume", "prepare_array", "write_ome_metadata",
    "DenoiSegPredict", "SliceInstances", "Downsample", "register_network",
]
