"""napari plugin: click and box prompts on an image or a volume's slices, masks from msa."""

from .widget import SegmentWidget

__all__ = ["SegmentWidget"]
