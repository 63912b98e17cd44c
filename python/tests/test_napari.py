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


def test_boxes_propagate_through_a_volume_as_msa_predict_volume_does(make_napari_viewer, qtbot, tmp_path):
    import json
    import os
    import subprocess

    import nibabel

    nii = sorted((ROOT / "assets" / "hippocampus3d" / "imagesTr").glob("*.nii.gz"))[0]
    truth = np.asarray(nibabel.load(ROOT / "assets" / "hippocampus3d" / "labelsTr" / nii.name).dataobj)
    ks = [k for k in range(truth.shape[2]) if (truth[:, :, k] > 0).any()]
    ka, kb = ks[len(ks) // 4], ks[3 * len(ks) // 4]
    boxes = {}
    for k in (ka, kb):
        xs, ys = np.nonzero(truth[:, :, k] > 0)
        boxes[k] = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.open_volume(nii)
    widget.start()
    labels = viewer.layers["msa labels"]
    for k in (ka, kb):
        x0, y0, x1, y1 = boxes[k]
        viewer.dims.set_current_step(0, k)
        corners = [[k, y0, x0], [k, y0, x1], [k, y1, x1], [k, y1, x0]]
        viewer.layers["msa boxes"].add_rectangles([corners])
        qtbot.waitUntil(lambda: labels.data[k].any(), timeout=120_000)
    widget.propagate()
    qtbot.waitUntil(lambda: all(labels.data[k].any() for k in range(ka, kb + 1)) and not widget.status.text(),
                    timeout=300_000)
    ours = tmp_path / "napari.nii.gz"
    widget.save(ours)
    prompts = {"classes": {"1": {"boxes": {str(k): b for k, b in boxes.items()},
                                 "interpolate_boxes": True}}}
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    cli = tmp_path / "cli.nii.gz"
    msa_bin = os.environ.get("MSA_BIN", str(ROOT / "target" / "release" / "msa"))
    # The plugin works in the array's own voxel indices, as napari shows it.
    subprocess.run([msa_bin, "predict-volume", "--checkpoint", "lite_medsam", "--axis", "stored", "--image", str(nii),
                    "--prompts", str(tmp_path / "p.json"), "--out", str(cli)], check=True)
    expected = np.asarray(nibabel.load(cli).dataobj)
    assert expected[:, :, ka:kb + 1].any(axis=(0, 1)).all()
    assert np.array_equal(np.asarray(nibabel.load(ours).dataobj), expected)
    assert np.allclose(nibabel.load(ours).affine, nibabel.load(nii).affine, atol=1e-4)
