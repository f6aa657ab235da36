"""monai-denoiseg: joint denoising and instance segmentation of EM images as MONAI components."""

__version__ = "0.1.0"
