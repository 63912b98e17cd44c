"""The Python API against the `msa` command line on real data, its errors, and the GIL.

Run by .ci/run after `cargo test --release`, in the venv it makes: the `msa` binary of that
build (MSA_BIN, default target/release/msa) is the reference every mask is compared with.
"""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import nibabel
import numpy as np
import pytest
from PIL import Image

import msa

ROOT = Path(__file__).resolve().parents[2]
SLICES = ROOT / "assets" / "hippocampus2d"
VOLUMES = ROOT / "assets" / "hippocampus3d"
MSA_BIN = os.environ.get("MSA_BIN", str(ROOT / "target" / "release" / "msa"))


@pytest.fixture(scope="module")
def model():
    return msa.Model("lite_medsam")


def cli(*args):
    done = subprocess.run([MSA_BIN, *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def cli_mask(image, tmp_path, *prompt):
    out = tmp_path / "mask.png"
    cli("predict", "--checkpoint", "lite_medsam", "--image", image, *prompt, "--out", out)
    return np.asarray(Image.open(out)) == 255


def box_of(mask):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def centre_of(mask):
    ys, xs = np.nonzero(mask)
    i = len(xs) // 2
    return [float(xs[i]), float(ys[i])]


def test_info_describes_the_model(model):
    info = model.info
    assert info["backbone"] == "tiny_vit" and info["image_size"] == 256
    assert info["parameters"] > 9_000_000 and info["precision"] == "f32"


@pytest.mark.parametrize("case", ["hippocampus_004_z19", "hippocampus_006_z16", "hippocampus_008_z13"])
def test_masks_equal_msa_predict_on_real_slices(model, tmp_path, case):
    path = SLICES / "images" / f"{case}.png"
    image = np.asarray(Image.open(path))
    truth = np.asarray(Image.open(SLICES / "masks" / f"{case}.png")) > 0
    box, click = box_of(truth), centre_of(truth)
    e = model.embed(image)
    assert e.image_size == image.shape[:2]
    mask, iou, logits = model.predict(e, box=box)
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    assert logits.dtype == np.float32 and np.array_equal(mask, logits > 0)
    assert 0.0 < iou <= 1.5
    assert np.array_equal(mask, cli_mask(path, tmp_path, "--box", ",".join(map(str, box))))
    mask, _, _ = model.predict(image, points=[click], labels=[1])
    assert np.array_equal(mask, cli_mask(path, tmp_path, "--point", "{},{},1".format(*click)))


def test_masks_equal_msa_predict_on_a_16_bit_image(model, tmp_path):
    y, x = np.mgrid[0:120, 0:160]
    image = (1000 + 20 * x + 7 * y).astype(np.uint16)
    image[((x - 70) ** 2 / 1.4 + (y - 62) ** 2) < 900] += 9000
    path = tmp_path / "deep.png"
    Image.fromarray(image).save(path)
    assert np.asarray(Image.open(path)).dtype == np.uint16
    box = [40.0, 35.0, 105.0, 92.0]
    mask, _, _ = model.predict(image, box=box)
    assert mask.any()
    assert np.array_equal(mask, cli_mask(path, tmp_path, "--box", ",".join(map(str, box))))


def test_boxes_give_one_mask_each(model):
    image = np.asarray(Image.open(SLICES / "images" / "hippocampus_004_z19.png"))
    e = model.embed(image)
    boxes = np.array([[10, 10, 30, 30], [5, 8, 25, 20]])  # float64, as numpy makes them
    masks, ious, logits = model.predict(e, boxes=boxes)
    assert masks.shape == (2, *image.shape[:2]) and ious.shape == (2,)
    one, _, _ = model.predict(e, box=list(boxes[1]))
    assert np.array_equal(masks[1], one)
    single, iou, _ = model.predict(e, boxes=boxes[1:])
    assert single.shape == (1, *image.shape[:2]) and iou.shape == (1,)
    assert np.array_equal(single[0], one)


def test_predict_volume_equals_msa_predict_volume(model, tmp_path):
    nii = sorted((VOLUMES / "imagesTr").glob("*.nii.gz"))[0]
    labels_file = VOLUMES / "labelsTr" / nii.name
    truth = np.asarray(nibabel.load(labels_file).dataobj)
    k = int(np.argmax((truth > 0).sum(axis=(0, 1))))
    # In the stored frame, prompt x indexes the array's first axis and y its second.
    xs, ys = np.nonzero(truth[:, :, k] > 0)
    prompts = {"classes": {"1": {"boxes": {str(k): [float(xs.min()), float(ys.min()),
                                                      float(xs.max() + 1), float(ys.max() + 1)]}}}}
    v = msa.read_volume(nii)
    assert v.shape == truth.shape
    assert np.allclose(v.array, nibabel.load(nii).get_fdata(), atol=1e-4)
    assert np.allclose(v.affine, nibabel.load(nii).affine, atol=1e-4)
    labels = model.predict_volume(v, prompts, axis="stored")
    assert labels.shape == truth.shape and labels.dtype == np.uint8 and labels[:, :, k].any()
    ours = tmp_path / "ours.nii.gz"
    msa.write_labels(ours, labels, like=v)
    theirs = tmp_path / "cli.nii.gz"
    prompt_file = tmp_path / "prompts.json"
    prompt_file.write_text(json.dumps(prompts))
    cli("predict-volume", "--checkpoint", "lite_medsam", "--image", nii, "--axis", "stored",
        "--prompts", prompt_file, "--out", theirs)
    cli_labels = np.asarray(nibabel.load(theirs).dataobj)
    assert np.array_equal(labels, cli_labels)
    assert np.array_equal(np.asarray(nibabel.load(ours).dataobj), cli_labels)
    assert np.allclose(nibabel.load(ours).affine, nibabel.load(nii).affine, atol=1e-4)
    # By default both turn the volume into the axial canonical frame (the file is stored
    # right-anterior-superior, so x and y are reversed there) and agree again.
    canonical = model.predict_volume(v, prompts)
    cli("predict-volume", "--checkpoint", "lite_medsam", "--image", nii,
        "--prompts", prompt_file, "--out", theirs)
    assert canonical[:, :, k].any() and not np.array_equal(canonical, labels)
    assert np.array_equal(canonical, np.asarray(nibabel.load(theirs).dataobj))


def test_errors_are_python_exceptions_with_msa_messages(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        msa.Model(str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="nope.nii"):
        msa.read_volume(tmp_path / "nope.nii")
    image = np.zeros((40, 50), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"expected shape \(H, W\) or \(H, W, 3\)"):
        model.embed(np.zeros((2, 40, 50, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8, uint16, float32 or float64"):
        model.embed(np.zeros((40, 50), dtype=np.complex64))
    with pytest.raises(ValueError, match="NaN"):
        model.embed(np.full((40, 50), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="labels are 1"):
        model.predict(image, points=[[5, 5]], labels=[2])
    with pytest.raises(ValueError, match="outside the 50x40 image"):
        model.predict(image, points=[[60, 5]])
    with pytest.raises(ValueError, match="x0 < x1"):
        model.predict(image, box=[30, 5, 10, 20])
    with pytest.raises(ValueError, match="no prompt"):
        model.predict(image)
    with pytest.raises(ValueError, match="device"):
        msa.Model("lite_medsam", device="tpu")
    with pytest.raises(ValueError, match="bf16 needs a GPU"):
        msa.Model("lite_medsam", precision="bf16")
    other = msa.Model("lite_medsam")
    with pytest.raises(ValueError, match="another Model"):
        model.predict(other.embed(image), box=[5, 5, 20, 20])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        msa.evaluate("lite_medsam", tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(RuntimeError, match="pass --dataset decathlon"):
        msa.train("lite_medsam", SLICES, tmp_path / "x", three_d=True, callback=None)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(RuntimeError, match="broken.safetensors"):
        msa.Model(str(broken))


def test_the_gil_is_released_while_rust_computes(model):
    image = np.asarray(Image.open(SLICES / "images" / "hippocampus_004_z19.png"))
    ticks, running = [0], [True]

    def count():
        while running[0]:
            ticks[0] += 1
            time.sleep(0.001)

    def rate(work):
        """Ticks per second of the counting thread while `work` runs."""
        start, t0 = ticks[0], time.perf_counter()
        work()
        return (ticks[0] - start) / (time.perf_counter() - t0)

    thread = threading.Thread(target=count)
    thread.start()
    try:
        idle = rate(lambda: time.sleep(0.3))
        embedding = []
        embed = rate(lambda: embedding.extend(model.embed(image) for _ in range(3)))
        e = embedding[0]
        predict = rate(lambda: [model.predict(e, box=[10, 10, 30, 30]) for _ in range(20)])
    finally:
        running[0] = False
        thread.join()
    # Holding the GIL through a call would let the thread tick about once per call.
    assert embed > 0.3 * idle and predict > 0.3 * idle, (idle, embed, predict)


def train_options():
    return dict(epochs=2, batch_size=2, lr=1e-3, prompt="click", train="decoder",
                no_augment=True, limit=4, seed=3, samples=1)


def test_train_makes_the_run_folder_msa_train_makes(tmp_path):
    steps = []
    result = msa.train("lite_medsam", SLICES, tmp_path / "py",
                       callback=lambda *a: steps.append(a), **train_options())
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    assert steps[-1][:3] == (2, 2, 2) and all(s[3] > 0 and s[4] > 0 for s in steps)
    cli("train", "--checkpoint", "lite_medsam", "--data", SLICES, "--out", tmp_path / "cli",
        "--epochs", 2, "--batch-size", 2, "--lr", 1e-3, "--prompt", "click",
        "--train", "decoder", "--no-augment", "--limit", 4, "--seed", 3, "--samples", 1)
    for name in ["metrics.csv", "split.json", "config.toml"]:
        ours = (tmp_path / "py" / name).read_text().replace(str(tmp_path / "py"), "OUT")
        theirs = (tmp_path / "cli" / name).read_text().replace(str(tmp_path / "cli"), "OUT")
        assert ours == theirs, name
    ours = msa.Model("lite_medsam", adapters=tmp_path / "py" / "adapters_last.safetensors")
    assert ours.info["adapter_parameters"] > 0


def test_ctrl_c_stops_training_and_resume_finishes_it(tmp_path):
    import _thread

    def interrupt(epoch, step, steps, loss, rate):
        if epoch == 2:  # as Ctrl+C would: the signal arrives while Rust trains
            _thread.interrupt_main()

    with pytest.raises(KeyboardInterrupt):
        msa.train("lite_medsam", SLICES, tmp_path / "run", callback=interrupt, **train_options())
    assert (tmp_path / "run" / "state_last.safetensors").exists()
    done = msa.train("lite_medsam", SLICES, tmp_path / "run", resume=True, callback=None,
                     **train_options())
    assert [r["epoch"] for r in done["history"]] == [1, 2]
    with pytest.raises(ValueError, match="unknown training option `epoch`"):
        msa.train("lite_medsam", SLICES, tmp_path / "x", epoch=3)


def test_evaluate_returns_what_msa_eval_writes(tmp_path):
    got = msa.evaluate("lite_medsam", SLICES, tmp_path / "py", prompt="box", overlays=0)
    cli("eval", "--checkpoint", "lite_medsam", "--data", SLICES, "--prompt", "box",
        "--overlays", 0, "--out", tmp_path / "cli")
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert got["summary"] == summary and summary["n_cases"] == 30
    assert (tmp_path / "py" / "per_case.csv").read_text() == (tmp_path / "cli" / "per_case.csv").read_text()
    assert len(got["cases"]) == 30 and 0.5 < got["summary"]["dice"]["mean"] < 1.0
    with pytest.raises(ValueError, match="dataset `mnist`"):
        msa.evaluate("lite_medsam", SLICES, tmp_path / "x", dataset="mnist")


def test_evaluate_with_clicks_matches_msa_eval_clicks(tmp_path):
    data = tmp_path / "three"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    cases = json.loads((SLICES / "split.json").read_text())["test"][:3]
    for case in cases:
        for sub in ("images", "masks"):
            (data / sub / f"{case}.png").write_bytes((SLICES / sub / f"{case}.png").read_bytes())
    (data / "split.json").write_text(json.dumps({"train": [], "val": [], "test": cases}))
    got = msa.evaluate("lite_medsam", data, tmp_path / "py", clicks=[1, 3], overlays=0)
    cli("eval", "--checkpoint", "lite_medsam", "--data", data, "--clicks", "1,3",
        "--overlays", 0, "--out", tmp_path / "cli")
    assert got["summary"] == json.loads((tmp_path / "cli" / "clicks.json").read_text())
    assert [a["clicks"] for a in got["summary"]["at"]] == [1, 3]
    one = msa.evaluate("lite_medsam", data, tmp_path / "one", prompt="click", overlays=0)
    first = {c["case"]: c["dice"] for c in one["cases"]}
    for c in got["cases"]:
        assert abs(c["dice"][0] - first[c["case"]]) < 1e-9
        assert len(c["dice"]) == len(c["iou"]) >= 3


def test_ctrl_c_stops_predict_volume_between_slices(model):
    import _thread

    v = msa.read_volume(sorted((VOLUMES / "imagesTr").glob("*.nii.gz"))[0])
    nx, ny, nz = v.shape
    prompts = {"classes": {"1": {"box3d": [2, 2, 0, nx - 2, ny - 2, nz - 1]}}}
    t0 = time.perf_counter()
    model.predict_volume(v, prompts)
    whole = time.perf_counter() - t0
    timer = threading.Timer(whole / 10, _thread.interrupt_main)
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        model.predict_volume(v, prompts)
    assert time.perf_counter() - t0 < whole / 2, whole
