"""The dock widget: a model and adapters, a Points layer for clicks (plain click positive,
Alt+click negative), a Shapes layer for boxes, and a Labels layer that each prompt updates.

Each image (or slice of a volume) is embedded once and cached; the encoder runs off the UI
thread, with a busy indicator. Volumes: prompts per slice and class; "Propagate" fills the
slices between boxed slices with interpolated boxes; "Save labels" writes NIfTI on the
grid of the volume it was opened from.
"""

import threading

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
        self.embeddings = {}  # (model, adapters, image layer, slice) -> msa.Embedding
        self.lock = threading.Lock()  # workers share the models and embeddings
        self.requests = 0
        self.latest = {}  # (slice, class) -> the newest request for it
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
        self.class_box.valueChanged.connect(self._set_defaults)
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
        self._set_defaults()

    def _set_defaults(self, *_, negative=False):
        """What the next click and box get: their class, and the click's label."""
        cls = self.class_box.value()
        if POINTS not in self.viewer.layers or BOXES not in self.viewer.layers:
            return
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
    def model_key(self):
        """The model and adapter file chosen now (read on the UI thread)."""
        return (self.model_box.currentText(), self.adapters.text() or None)

    def model(self, key):
        with self.lock:
            if key not in self.models:
                self.models[key] = msa.Model(key[0], adapters=key[1])
            return self.models[key]

    def _choose_adapters(self):
        path, _ = QFileDialog.getOpenFileName(self, "Adapters", filter="*.safetensors *.pth")
        if path:
            self.adapters.setText(path)

    def plane(self, k, image):
        """The 2D image the model sees: image layer `image`, or its slice k when it is a
        volume (scaled to 8 bits as `msa predict-volume` scales it, when opened here)."""
        if self.volume is not None and image == self.volume_layer:
            return self.volume_gray[:, :, k].T
        layer = self.viewer.layers[image]
        data = np.asarray(layer.data)
        return data[k] if layer.ndim == 3 and not layer.rgb else data

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
    def update(self, event=None):
        """Recomputes the current class on the current slice from its prompts."""
        action = getattr(getattr(event, "action", None), "value", None)
        if action in ("adding", "removing", "changing"):
            return  # the layer's data changes next; its "...ed" event follows
        k, cls = self.current_slice(), self.class_box.value()
        clicks, box = self.prompts(k, cls)
        if not clicks and box is None:  # the last prompt was removed: so is the mask
            self._show([(self._request(k, cls), k, cls, None)])
            return
        self.run(self._predict, [(self._request(k, cls), k, clicks, box)], cls)

    def _request(self, k, cls):
        """A number for a new computation of (slice, class); older results are dropped."""
        self.requests += 1
        self.latest[(k, cls)] = self.requests
        return self.requests

    def run(self, work, jobs, cls):
        self.status.setText("computing…")
        context = (self.model_key(), self.image_box.currentText())
        self.worker = thread_worker(work)(context, jobs, cls)
        self.worker.returned.connect(self._show)
        self.worker.errored.connect(lambda e: self.status.setText(f"error: {e}"))
        self.worker.start()

    def _predict(self, context, jobs, cls):
        """Off the UI thread: each job's mask, its slice's embedding cached."""
        model_key, image = context
        m = self.model(model_key)
        out = []
        for request, k, clicks, box in jobs:
            key = (*model_key, image, k)
            with self.lock:
                e = self.embeddings.get(key)
            if e is None:
                e = m.embed(self.plane(k, image))
                with self.lock:
                    self.embeddings[key] = e
            kwargs = {"box": box}
            if clicks:
                kwargs.update(points=[c for c, _ in clicks], labels=[l for _, l in clicks])
            mask, _, _ = m.predict(e, **kwargs)
            out.append((request, k, cls, mask))
        return out

    def _show(self, results):
        labels = self.viewer.layers[LABELS]
        data = labels.data
        for request, k, cls, mask in results:
            if self.latest.get((k, cls)) != request:
                continue  # a newer request for this slice and class is under way
            plane = data[k] if data.ndim == 3 else data
            plane[plane == cls] = 0
            if mask is not None:
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
                boxed[k] = np.array(box, dtype=np.float32)
        keys = sorted(boxed)
        jobs = []
        for a, b in zip(keys, keys[1:]):
            for k in range(a + 1, b):
                # As msa predict-volume's interpolate_boxes does, in f32.
                t = np.float32((k - a) / (b - a))
                box = boxed[a] + t * (boxed[b] - boxed[a])
                jobs.append((self._request(k, cls), k, [], [float(v) for v in box]))
        self.run(self._predict, jobs, cls)

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
