"""MONAI transforms of joint denoising and segmentation: array transforms and their dictionary twins."""

from .affinity import (
    DEFAULT_OFFSETS_3D,
    PAPER_OFFSETS_2D,
    LabelToAffinity,
    LabelToAffinityD,
    LabelToAffinityd,
    LabelToAffinityDict,
    class_balance_weight,
    label_to_affinity,
    offsets_for_ndim,
)
from .boxes import LabelToBoxes, LabelToBoxesD, LabelToBoxesd, LabelToBoxesDict, label_to_boxes
from .instances import (
    AffinityToInstances,
    AffinityToInstancesD,
    AffinityToInstancesd,
    AffinityToInstancesDict,
    merge_small_segments,
    mutex_watershed,
)
from .n2v import N2V_STRATEGIES, RandN2VMask, RandN2VMaskD, RandN2VMaskd, RandN2VMaskDict
from .noise import (
    RandClippedGaussianNoise,
    RandClippedGaussianNoised,
    RandClippedGaussianNoiseD,
    RandClippedGaussianNoiseDict,
    RandFilmNoise,
    RandFilmNoiseD,
    RandFilmNoised,
    RandFilmNoiseDict,
    RandGaussianPoissonNoise,
    RandGaussianPoissonNoiseD,
    RandGaussianPoissonNoised,
    RandGaussianPoissonNoiseDict,
)
