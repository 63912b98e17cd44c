"""The dock widget: a model and adapters, a Points layer for clicks (plain click positive,
Alt+click negative), a Shapes layer for boxes, and a Labels layer that each prompt updates.

Each image (or slice of a volume) is embedded once and cached; the encoder runs off the UI
thread, with a busy indicator. Volumes: prompts per slice and class; "Propagate" fills the
slices between boxed slices with interpolated boxes; "Save labels" writes NIfTI on the
grid of the volume it was opened from.
"""

import numpy as np
from napari.qt.threading import thread_worker
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

import msa

POINTS, BOXES, LABELS = "msa clicks", "msa boxes", "msa labels"


class SegmentWidget(QWidget):
    def __init__(self, napari_viewer, model="lite_medsam"):
        super().__init__()
        self.viewer = napari_viewer
        self.models = {}
        self.embeddings = {}
        self.volume = None  # an msa.Volume the image layer came from, for saving
        self.volume_layer = None
        self.worker = None
        form = QFormLayout(self)
        self.model_box = QComboBox()
        self.model_box.setEditable(True)
        self.model_box.addItem(model)
        form.addRow("Model", self.model_box)
        self.adapters = QLineEdit()
        self.adapters.setPlaceholderText("none")
        browse = QPushButton("Adapters…")
        browse.clicked.connect(self._choose_adapters)
        form.addRow(browse, self.adapters)
        self.image_box = QComboBox()
        form.addRow("Image", self.image_box)
        self.class_box = QSpinBox()
        self.class_box.setRange(1, 255)
        form.addRow("Class", self.class_box)
        start = QPushButton("Start prompting")
        start.clicked.connect(self.start)
        form.addRow(start)
        propagate = QPushButton("Propagate boxes")
        propagate.clicked.connect(self.propagate)
        form.addRow(propagate)
        save = QPushButton("Save labels…")
        save.clicked.connect(self._choose_save)
        form.addRow(save)
        self.status = QLabel("")
        form.addRow(self.status)
        self.viewer.layers.events.inserted.connect(self._list_images)
        self.viewer.layers.events.removed.connect(self._list_images)
        self._list_images()

    # -- layers -------------------------------------------------------------------------
    def _list_images(self, *_):
        current = self.image_box.currentText()
        self.image_box.clear()
        names = [l.name for l in self.viewer.layers if l.__class__.__name__ == "Image"]
        self.image_box.addItems(names)
        if current in names:
            self.image_box.setCurrentText(current)

    def image_layer(self):
        return self.viewer.layers[self.image_box.currentText()]

    def start(self):
        """Adds the prompt layers and the labels layer over the chosen image."""
        image = self.image_layer()
        shape = image.data.shape[:3] if self.is_volume() else image.data.shape[:2]
        if LABELS not in self.viewer.layers:
            self.viewer.add_labels(np.zeros(shape, dtype=np.uint8), name=LABELS)
        ndim = 3 if self.is_volume() else 2
        if BOXES not in self.viewer.layers:
            boxes = self.viewer.add_shapes(name=BOXES, ndim=ndim, edge_color="yellow",
                                           face_color="transparent",
                                           features={"class": np.zeros(0, dtype=int)})
            boxes.events.data.connect(self.update)
        if POINTS not in self.viewer.layers:
            points = self.viewer.add_points(name=POINTS, ndim=ndim, size=1.5,
                                            features={"label": np.zeros(0, dtype=int),
                                                      "class": np.zeros(0, dtype=int)})
            points.mouse_drag_callbacks.append(self._remember_modifier)
            points.events.data.connect(self.update)
            points.mode = "add"
        self.class_box.valueChanged.connect(self._set_defaults)
        self._set_defaults()

    def _set_defaults(self, *_, negative=False):
        """What the next click and box get: their class, and the click's label."""
        cls = self.class_box.value()
        self.viewer.layers[POINTS].feature_defaults = {"label": 0 if negative else 1,
                                                       "class": cls}
        self.viewer.layers[BOXES].feature_defaults = {"class": cls}

    def _remember_modifier(self, layer, event):
        self._set_defaults(negative="Alt" in event.modifiers)
        yield

    def is_volume(self):
        image = self.image_layer()
        return image.ndim == 3 and not image.rgb

    # -- the model ----------------------------------------------------------------------
    def model(self):
        key = (self.model_box.currentText(), self.adapters.text() or None)
        if key not in self.models:
            self.models[key] = msa.Model(key[0], adapters=key[1])
            self.embeddings.clear()
        return self.models[key]

    def _choose_adapters(self):
        path, _ = QFileDialog.getOpenFileName(self, "Adapters", filter="*.safetensors *.pth")
        if path:
            self.adapters.setText(path)

    def plane(self, k):
        """The 2D image the model sees: the image, or slice k of a volume (scaled to 8 bits
        as `msa predict-volume` scales it, when the volume was opened here)."""
        if self.volume is not None and self.image_layer().name == self.volume_layer:
            return self.volume_gray[:, :, k].T
        data = np.asarray(self.image_layer().data)
        return data[k] if self.is_volume() else data

    def current_slice(self):
        return int(self.viewer.dims.current_step[0]) if self.is_volume() else 0

    def prompts(self, k, cls):
        """Clicks (x, y, label) and the box of class `cls` on slice k, in image pixels."""
        points = self.viewer.layers[POINTS]
        feats = points.features
        clicks = []
        for p, label, c in zip(points.data, feats["label"], feats["class"]):
            if c == cls and (not self.is_volume() or int(round(p[0])) == k):
                y, x = p[-2], p[-1]
                clicks.append(([float(x), float(y)], int(label)))
        box = None
        boxes = self.viewer.layers[BOXES]
        for shape, sk in zip(boxes.data, boxes.features["class"]):
            if sk == cls and (not self.is_volume() or int(round(shape[0][0])) == k):
                ys, xs = shape[:, -2], shape[:, -1]
                box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
        return clicks, box

    # -- prompting ----------------------------------------------------------------------
    def update(self, *_):
        """Recomputes the current class on the current slice from its prompts."""
        k, cls = self.current_slice(), self.class_box.value()
        clicks, box = self.prompts(k, cls)
        if not clicks and box is None:
            return
        self.run(self._predict, k, cls, clicks, box)

    def run(self, work, *args):
        self.status.setText("computing…")
        self.worker = thread_worker(work)(*args)
        self.worker.returned.connect(self._show)
        self.worker.errored.connect(lambda e: self.status.setText(f"error: {e}"))
        self.worker.start()

    def _predict(self, k, cls, clicks, box):
        """Off the UI thread: the slice's mask (its embedding cached)."""
        m = self.model()
        key = (self.image_box.currentText(), k)
        if key not in self.embeddings:
            self.embeddings[key] = m.embed(self.plane(k))
        kwargs = {"box": box}
        if clicks:
            kwargs.update(points=[c for c, _ in clicks], labels=[l for _, l in clicks])
        mask, _, _ = m.predict(self.embeddings[key], **kwargs)
        return [(k, cls, mask)]

    def _show(self, results):
        labels = self.viewer.layers[LABELS]
        data = labels.data
        for k, cls, mask in results:
            plane = data[k] if data.ndim == 3 else data
            plane[plane == cls] = 0
            plane[mask] = cls
        labels.data = data
        labels.refresh()
        self.status.setText("")

    def propagate(self):
        """Boxes between boxed slices of the current class, interpolated, then segmented."""
        if not self.is_volume():
            return
        cls = self.class_box.value()
        boxed = {}
        for k in range(self.image_layer().data.shape[0]):
            _, box = self.prompts(k, cls)
            if box is not None:
                boxed[k] = np.array(box)
        keys = sorted(boxed)
        jobs = []
        for a, b in zip(keys, keys[1:]):
            for k in range(a + 1, b):
                t = (k - a) / (b - a)
                jobs.append((k, list(map(float, boxed[a] + t * (boxed[b] - boxed[a])))))
        self.run(self._propagate, cls, jobs)

    def _propagate(self, cls, jobs):
        return [r for k, box in jobs for r in self._predict(k, cls, [], box)]

    # -- saving -------------------------------------------------------------------------
    def _choose_save(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save labels", filter="*.nii.gz *.nii")
        if path:
            self.save(path)

    def save(self, path):
        """The labels as NIfTI on the grid of the volume the image came from."""
        if self.volume is None:
            raise ValueError("labels are saved on a volume's grid: open it with open_volume")
        labels = np.asarray(self.viewer.layers[LABELS].data)
        # napari shows slices first (k, y, x); msa's volumes are (x, y, k).
        msa.write_labels(path, np.ascontiguousarray(labels.transpose(2, 1, 0)), like=self.volume)

    def open_volume(self, path):
        """Reads a NIfTI file or DICOM folder with msa and shows it as slices (k, y, x)."""
        self.volume = msa.read_volume(path)
        self.volume_gray = self.volume.to_uint8()
        layer = self.viewer.add_image(self.volume.array.transpose(2, 1, 0), name=str(path))
        self.volume_layer = layer.name
        self.image_box.setCurrentText(layer.name)
        return layer
