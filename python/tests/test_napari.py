"""The napari plugin, headless (napari's viewer fixture; `.ci/run` gives it an X server
with xvfb-run): a box and a click on a real slice give the Labels layer `Model.predict`'s
mask for the same prompt. It leaves a screenshot in target/napari.png."""

from pathlib import Path

import numpy as np
from PIL import Image

import msa
from msa.napari import SegmentWidget

ROOT = Path(__file__).resolve().parents[2]
SLICES = ROOT / "assets" / "hippocampus2d"


def test_a_box_and_a_click_give_the_mask_of_model_predict(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image = np.asarray(Image.open(SLICES / "images" / "hippocampus_004_z19.png"))
    truth = np.asarray(Image.open(SLICES / "masks" / "hippocampus_004_z19.png")) > 0
    ys, xs = np.nonzero(truth)
    x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    click = [float(xs[len(xs) // 2]), float(ys[len(ys) // 2])]
    viewer.add_image(image, name="slice")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.start()
    labels = viewer.layers["msa labels"]
    viewer.layers["msa boxes"].add_rectangles([[y0, x0], [y1, x1]])
    qtbot.waitUntil(lambda: labels.data.any(), timeout=120_000)
    boxed = labels.data.copy()
    viewer.layers["msa clicks"].add([[click[1], click[0]]])
    qtbot.waitUntil(lambda: not np.array_equal(labels.data, boxed), timeout=120_000)
    m = msa.Model("lite_medsam")
    expected, _, _ = m.predict(image, points=[click], labels=[1], box=[x0, y0, x1, y1])
    assert expected.sum() > 50
    assert np.array_equal(labels.data == 1, expected)
    assert np.array_equal(boxed == 1, m.predict(image, box=[x0, y0, x1, y1])[0])
    shot = ROOT / "target" / "napari.png"
    viewer.window._qt_window.resize(1200, 760)
    viewer.reset_view()
    viewer.screenshot(path=str(shot), canvas_only=False)
    assert shot.stat().st_size > 10_000
