from .array import LabelToBoxes, label_to_boxes
from .dictionary import LabelToBoxesD, LabelToBoxesd, LabelToBoxesDict

__all__ = ["LabelToBoxes", "label_to_boxes", "LabelToBoxesd", "LabelToBoxesD", "LabelToBoxesDict"]
