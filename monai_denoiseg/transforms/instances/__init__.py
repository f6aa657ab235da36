"""Predicted affinities -> instance labels by the mutex watershed (array and dictionary transforms)."""

from .array import AffinityToInstances, merge_small_segments, mutex_watershed
from .dictionary import AffinityToInstancesD, AffinityToInstancesd, AffinityToInstancesDict
