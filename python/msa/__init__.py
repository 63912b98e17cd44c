"""msa: Segment Anything with Medical SAM Adapter, in Rust, from Python without PyTorch.

numpy in, numpy out::

    import msa
    m = msa.Model("lite_medsam")
    e = m.embed(image)                      # (H, W) or (H, W, 3): uint8, uint16 or float
    mask, iou, logits = m.predict(e, box=[x0, y0, x1, y1])
    mask, iou, logits = m.predict(e, points=[[x, y]], labels=[1])

Volumes: ``v = msa.read_volume(path)`` (NIfTI, or a DICOM series folder), then
``labels = m.predict_volume(v, prompts)`` and ``msa.write_labels(path, labels, like=v)``.
Training: ``msa.train(checkpoint=..., data=..., out=..., epochs=..., ...)``.
"""

import sys

from ._msa import (
    Embedding,
    Model,
    Volume,
    __version__,
    evaluate,
    fetch,
    read_volume,
    write_labels,
)
from ._msa import train as _train


class TextBar:
    """A one-line progress bar for `train`: a terminal and a Jupyter cell both show it."""

    def __init__(self, file=None, width=30):
        self.file = file or sys.stdout
        self.width = width

    def __call__(self, epoch, step, steps, loss, rate):
        filled = self.width * step // max(steps, 1)
        bar = "=" * filled + " " * (self.width - filled)
        end = "\n" if step >= steps else ""
        print(f"\repoch {epoch} [{bar}] {step}/{steps} loss {loss:.4f} ({rate:.2f}/s)",
              end=end, file=self.file, flush=True)


def train(checkpoint, data, out, *, resume=False, callback="bar", device="cpu", **options):
    """Trains as `msa train` does, into the run folder `out` (resumable with resume=True).

    `options` are the run configuration's fields, named as in the run folder's config.toml:
    epochs, batch_size, lr, lr_step, lr_gamma, prompt ("click", "box", "both"), train
    ("adapters", "decoder", "lora", "all"), val_every, val_fraction, seed, workers,
    adapter_ratio, adapter_init, lora_rank, samples, limit, model_config, image_size,
    dataset, three_d, chunk, labels, window, holdout, checkpoint_blocks, precision, and
    no_augment. `callback(epoch, step, steps, loss, images_per_s)` hears of every step
    (default: a text bar; None: silence). Ctrl+C stops the run between steps; the epochs
    it finished stay in `out`. Returns {"out", "best_dice", "history": [...]}.
    """
    if callback == "bar":
        callback = TextBar()
    return _train(str(checkpoint), str(data), str(out), resume=resume, callback=callback,
                  device=device, **options)


__all__ = [
    "Embedding",
    "Model",
    "TextBar",
    "Volume",
    "__version__",
    "evaluate",
    "fetch",
    "read_volume",
    "train",
    "write_labels",
]
