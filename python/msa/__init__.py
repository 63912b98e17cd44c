"""msa: Segment Anything with Medical SAM Adapter, in Rust, from Python without PyTorch.

numpy in, numpy out::

    import msa
    m = msa.Model("lite_medsam")
    e = m.embed(image)                      # (H, W) or (H, W, 3): uint8, uint16 or float
    mask, iou, logits = m.predict(e, box=[x0, y0, x1, y1])
    mask, iou, logits = m.predict(e, points=[[x, y]], labels=[1])

Volumes: ``v = msa.read_volume(path)`` (NIfTI, or a DICOM series folder), then
``labels = m.predict_volume(v, prompts)`` and ``msa.write_labels(path, labels, like=v)``.
"""

from ._msa import (
    Embedding,
    Model,
    Volume,
    __version__,
    fetch,
    read_volume,
    write_labels,
)

__all__ = [
    "Embedding",
    "Model",
    "Volume",
    "__version__",
    "fetch",
    "read_volume",
    "write_labels",
]
