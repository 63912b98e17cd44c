#!/usr/bin/env python3
"""QUALITY.md's tables and pictures from bench/quality.sh's folders.

    python tools/quality_report.py quality docs/quality   # needs matplotlib and pillow
    python tools/quality_report.py quality docs/quality --also quality/r25

    python tools/quality_report.py --study ddti decoder click=quality/p-click mixed=quality/p-mixed

    python tools/quality_report.py --epochs docs/quality/epochs.png "MSA=quality/runs/ddti/adapters"

    python tools/quality_report.py --paired ddti box quality/eval/ddti/adapters quality/eval/ddti/all

Prints one markdown table per dataset and writes, per dataset, `<ds>_curves.png` (validation
Dice per epoch, every row), `<ds>_clicks.png` (Dice against corrective clicks) and
`<ds>_cases.png` (the same test cases under every row, one click each). `--also TREE`
fills rows not evaluated in the first tree from another one (such as runs at another adapter
ratio, which their names then give). Runs longer than the budget count its first epochs.
"""
import itertools
import json
import os
import re
import sys

ROWS = ["frozen", "decoder", "adapters", "lora", "all"]
NAMES = {
    "frozen": "frozen",
    "decoder": "decoder adapters",
    "adapters": "MSA (encoder + decoder)",
    "lora": "LoRA",
    "all": "full fine-tuning",
}
DATASETS = ["ph2", "ddti", "hip2d", "hip3d"]
# One colour per row in every picture.
COLORS = {"frozen": "tab:gray", "decoder": "tab:blue", "adapters": "tab:orange",
          "lora": "tab:green", "all": "tab:red", "nnunet": "black"}
# bench/quality.sh's EPOCHS and msa train's --adapter-ratio default.
BUDGET_EPOCHS = 10
DEFAULT_RATIO = 0.125
NNUNET_IDS = {"ph2": "Dataset501_PH2", "ddti": "Dataset502_DDTI", "hip2d": "Dataset503_Hip2D",
              "hip3d": "Dataset504_Hip3D"}


def name_of(ds, row):
    """On volumes bench/quality.sh trains with --3d, which adds the depth adapters."""
    if ds == "hip3d" and row != "frozen":
        return NAMES[row] + " + depth adapters"
    return NAMES[row]


def rows_of(tops, ds):
    """(row, tree) for every row evaluated with a click, from the first tree that has it."""
    found = []
    for row in ROWS:
        for top in tops:
            if os.path.exists(os.path.join(top, "eval", ds, row, "click", "summary.json")):
                found.append((row, top))
                break
    return found


def label_of(ds, row, top):
    """The row's name, with its adapter ratio where that is not the default."""
    import tomllib

    try:
        with open(os.path.join(top, "runs", ds, row, "config.toml"), "rb") as f:
            ratio = tomllib.load(f).get("adapter_ratio")
    except (OSError, tomllib.TOMLDecodeError):
        ratio = None
    name = name_of(ds, row)
    if row in ("decoder", "adapters") and ratio is not None and ratio != DEFAULT_RATIO:
        name += f", ratio {ratio:g}"
    return name


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def log_lines(run):
    try:
        with open(os.path.join(run, "log.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def epochs_of(run, budget=BUDGET_EPOCHS):
    """The last record of each epoch up to `budget` (a resumed run may log an epoch twice)."""
    by_epoch = {}
    for line in log_lines(run):
        if line.get("event") == "epoch":
            by_epoch[line["epoch"]] = line
    return [by_epoch[k] for k in sorted(by_epoch) if budget is None or k <= budget]


def pm(stat, digits=3):
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def eval_cell(top, ds, row, prompt):
    s = read_json(os.path.join(top, "eval", ds, row, prompt, "summary.json"))
    if not s:
        return "-", "-"
    hd = pm(s["hd95"], 1)
    if s.get("hd95_missing"):
        hd += f" ({s['hd95_missing']} undef.)"
    return pm(s["dice"]), hd


def mib(n):
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def table(tops, ds):
    out = [
        "| row | click Dice | click HD95 | box Dice | box HD95 | Dice, 3 clicks | NoC@85 | "
        "trainable | train time | peak memory | file kept |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, top in rows_of(tops, ds):
        run = os.path.join(top, "runs", ds, row)
        ev = os.path.join(top, "eval", ds, row)
        cd, ch = eval_cell(top, ds, row, "click")
        bd, bh = eval_cell(top, ds, row, "box")
        clicks = read_json(os.path.join(ev, "clicks", "clicks.json"))
        d3 = noc = "-"
        if clicks:
            at = {a["clicks"]: a for a in clicks["at"]}
            d3 = pm(at.get(3, {}).get("dice"))
            noc = f"{clicks['noc85']['mean']:.1f} ({clicks['reached85']}/{clicks['n_cases']})"
        start = next((l for l in log_lines(run) if l.get("event") == "start"), None)
        epochs = epochs_of(run)
        warn_past_budget(run)
        trainable = "0 %"
        if start:
            trainable = f"{100 * start['trainable'] / start['total']:.2f} %"
        secs = sum(e.get("train_seconds", 0) for e in epochs)
        time = f"{secs / 60:.0f} min ({len(epochs)} ep.)" if epochs else "-"
        peak = max((e.get("peak_memory_mib", 0) for e in epochs), default=0)
        peak = f"{peak:.0f} MiB" if peak else eval_peak(ev)
        kept = os.path.join(run, "adapters_best.safetensors")
        kept = mib(os.path.getsize(kept)) if os.path.exists(kept) else "-"
        out.append(
            f"| {label_of(ds, row, top)} | {cd} | {ch} | {bd} | {bh} | {d3} | {noc} | {trainable} | "
            f"{time} | {peak} | {kept} |"
        )
    out.extend(nnunet_rows(tops[0], ds))
    return "\n".join(out)


def warn_past_budget(run):
    """The table's time and memory are the budget's; say when the kept checkpoint is not."""
    ep = [e for e in epochs_of(run, None) if e.get("val_dice") is not None]
    best = max(ep, key=lambda e: e["val_dice"]) if ep else None
    if best and best["epoch"] > BUDGET_EPOCHS:
        print(f"warning: {run}: its best epoch ({best['epoch']}) is past the budget of "
              f"{BUDGET_EPOCHS}", file=sys.stderr)


def nnunet_rows(top, ds):
    """bench/nnunet_baseline.sh's runs: no prompt, so one Dice across the prompt columns."""
    rows = []
    evals = os.path.join(top, "eval", ds)
    for name in sorted(os.listdir(evals)):
        if not name.startswith("nnunet-"):
            continue
        trainer = name[len("nnunet-"):]
        d, h = eval_cell(top, ds, name, "")
        try:
            log = open(os.path.join(top, "nnunet", f"{ds}-{trainer}", "train.log")).read()
        except OSError:
            log = ""
        times = [float(t) for t in re.findall(r"Epoch time: ([0-9.]+) s", log)]
        time = f"{sum(times) / 60:.0f} min ({len(times)} ep.)" if times else "-"
        rss = [int(k) for k in re.findall(r"Maximum resident set size \(kbytes\): (\d+)", log)]
        peak = f"{max(rss) / 1024:.0f} MiB (RSS)" if rss else "-"
        kept = os.path.join(top, "nnunet", "results", NNUNET_IDS[ds],
                            f"{trainer}__nnUNetPlans__2d", "fold_0", "checkpoint_final.pth")
        kept = mib(os.path.getsize(kept)) if os.path.exists(kept) else "-"
        rows.append(f"| nnU-Net v2 2d, {trainer.removeprefix('nnUNetTrainer_')} (no prompt) | "
                    f"{d} | {h} | {d} | {h} | - | - | 100 % | {time} | {peak} | {kept} |")
    return rows


def nnunet_dice(top, ds):
    """(name, mean test Dice) of each nnU-Net baseline: a level, since it takes no prompt."""
    evals = os.path.join(top, "eval", ds)
    found = []
    for name in sorted(os.listdir(evals)):
        s = read_json(os.path.join(evals, name, "summary.json"))
        if name.startswith("nnunet-") and s:
            found.append((f"nnU-Net, {name.removeprefix('nnunet-nnUNetTrainer_')} (no prompt)",
                          s["dice"]["mean"]))
    return found


def eval_peak(ev):
    try:
        text = open(os.path.join(ev, "box.log")).read()
    except OSError:
        return "-"
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return f"{int(m.group(1)) / 1024:.0f} MiB (eval)" if m else "-"


def figure(out, name, draw, xlabel, ylabel, title):
    """A 0..1 line plot of whatever `draw(ax)` adds; None when it adds nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if not draw(ax):
        plt.close(fig)
        return None
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(tops, ds, out):
    def draw(ax):
        drawn = False
        for row, top in rows_of(tops, ds):
            ep = [e for e in epochs_of(os.path.join(top, "runs", ds, row))
                  if e.get("val_dice") is not None]
            if ep:
                ax.plot([e["epoch"] for e in ep], [e["val_dice"] for e in ep], marker="o",
                        color=COLORS[row], label=label_of(ds, row, top))
                drawn = True
        return drawn

    return figure(out, f"{ds}_curves.png", draw, "epoch", "validation Dice (mixed prompts)",
                  f"{ds}: LiteMedSAM, validation Dice per epoch")


def click_curves(tops, ds, out):
    def draw(ax):
        drawn = False
        for row, top in rows_of(tops, ds):
            c = read_json(os.path.join(top, "eval", ds, row, "clicks", "clicks.json"))
            if c:
                curve = c["dice_curve"]
                ax.plot(range(1, len(curve) + 1), curve, marker=".", color=COLORS[row],
                        label=label_of(ds, row, top))
                ax.set_xticks(range(0, 21, 2))
                drawn = True
        styles = itertools.cycle(["--", ":", "-."])
        for (name, dice), style in zip(nnunet_dice(tops[0], ds), styles):
            ax.axhline(dice, color=COLORS["nnunet"], linestyle=style, label=name)
        return drawn

    return figure(out, f"{ds}_clicks.png", draw,
                  "clicks (first seeded, then at the largest error)", "test Dice",
                  f"{ds}: Dice against clicks")


def fitted(width, height, size):
    """Width, height and scale of an image scaled to fit a size x size cell."""
    scale = min(size / width, size / height)
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def fit(im, size):
    """The image scaled to fit a size x size cell; small ones (the slices are about 36 x 52)
    are enlarged with nearest-neighbour so their pixels stay visible."""
    from PIL import Image

    w, h, scale = fitted(im.width, im.height, size)
    return im.resize((w, h), Image.NEAREST if scale > 1 else Image.LANCZOS)


def cases(tops, ds, out, n=4, size=160):
    from PIL import Image, ImageDraw

    overlays = lambda row, top: os.path.join(top, "eval", ds, row, "click", "overlays")
    rows = [(r, t) for r, t in rows_of(tops, ds) if os.path.isdir(overlays(r, t))]
    if not rows:
        return None
    names = sorted(os.listdir(overlays(*rows[0])))[:n]
    # Each case's row is as tall as its thumbnail (PH2's images are wider than tall).
    heights = []
    for name in names:
        with Image.open(os.path.join(overlays(*rows[0]), name)) as im:
            heights.append(fitted(im.width, im.height, size)[1])
    tops_y = [30]  # below the labels
    for h in heights:
        tops_y.append(tops_y[-1] + h)
    sheet = Image.new("RGB", (size * len(rows), tops_y[-1]), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (row, top) in enumerate(rows):
        draw.text((j * size + 4, 3), label_of(ds, row, top).replace(", ", "\n"), fill="black")
        for i, name in enumerate(names):
            p = os.path.join(overlays(row, top), name)
            if os.path.exists(p):
                sheet.paste(fit(Image.open(p).convert("RGB"), size), (j * size, tops_y[i]))
    path = os.path.join(out, f"{ds}_cases.png")
    sheet.save(path)
    return path


def volume_cases(tops, ds, out, n=2, scale=3):
    """Volumes: `msa eval` writes a montage per case (ground truth left, prediction right, a
    few labelled slices down); one column of ground truth, then each row's predictions."""
    from PIL import Image, ImageDraw

    montages = lambda row, top: os.path.join(top, "eval", ds, row, "click", "montage")
    rows = [(r, t) for r, t in rows_of(tops, ds) if os.path.isdir(montages(r, t))]
    if not rows:
        return None
    names = sorted(os.listdir(montages(*rows[0])))[:n]
    with Image.open(os.path.join(montages(*rows[0]), names[0])) as im:
        half, height = (im.width - 2) // 2, im.height
    width = (half + 2) * scale
    sheet = Image.new("RGB", (width * (len(rows) + 1), 30 + height * scale * len(names)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    labels = ["ground truth"] + [label_of(ds, r, t) for r, t in rows]
    for j, label in enumerate(labels):
        draw.text((j * width + 4, 3), label.replace(", ", "\n").replace(" + ", "\n+ "),
                  fill="black")
    for i, name in enumerate(names):
        y = 30 + i * height * scale
        for j, (row, top) in enumerate([rows[0]] + rows):
            p = os.path.join(montages(row, top), name)
            if not os.path.exists(p):
                continue
            im = Image.open(p).convert("RGB")
            left = 0 if j == 0 else half + 2
            tile = im.crop((left, 0, left + half, im.height))
            sheet.paste(tile.resize((half * scale, im.height * scale), Image.NEAREST),
                        (j * width, y))
    path = os.path.join(out, f"{ds}_cases.png")
    sheet.save(path)
    return path


def main(tops, out):
    os.makedirs(out, exist_ok=True)
    for ds in DATASETS:
        if not os.path.isdir(os.path.join(tops[0], "eval", ds)):
            continue
        print(f"### {ds}\n")
        print(table(tops, ds))
        print()
        pictures = cases(tops, ds, out) if ds != "hip3d" else volume_cases(tops, ds, out)
        for p in (curves(tops, ds, out), click_curves(tops, ds, out), pictures):
            if p:
                print(f"wrote {p}", file=sys.stderr)


def study(ds, row, trees, out=None):
    """One line per training recipe (label=folder) of the same dataset and row; with `out`,
    their Dice-against-clicks curves in one picture."""
    print("| training prompts | click Dice | box Dice | Dice, 3 clicks | Dice, 5 clicks | "
          "NoC@85 | NoC@90 | best validation Dice (epoch) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, top in (t.split("=", 1) for t in trees):
        cd, _ = eval_cell(top, ds, row, "click")
        bd, _ = eval_cell(top, ds, row, "box")
        c = read_json(os.path.join(top, "eval", ds, row, "clicks", "clicks.json")) or {}
        at = {a["clicks"]: a for a in c.get("at", [])}
        noc = lambda k: (f"{c[k]['mean']:.1f} ({c['reached' + k[3:]]}/{c['n_cases']})"
                         if c else "-")
        ep = [e for e in epochs_of(os.path.join(top, "runs", ds, row), None)
              if e.get("val_dice")]
        best = max(ep, key=lambda e: e["val_dice"]) if ep else None
        best = f"{best['val_dice']:.3f} ({best['epoch']} of {len(ep)})" if best else "-"
        print(f"| {label} | {cd} | {bd} | {pm(at.get(3, {}).get('dice'))} | "
              f"{pm(at.get(5, {}).get('dice'))} | {noc('noc85')} | {noc('noc90')} | {best} |")
    if out:
        def draw(ax):
            for label, top in (t.split("=", 1) for t in trees):
                for r in (("frozen", "frozen LiteMedSAM"), (row, label)):
                    c = read_json(os.path.join(top, "eval", ds, r[0], "clicks", "clicks.json"))
                    if c:
                        curve = c["dice_curve"]
                        ax.plot(range(1, len(curve) + 1), curve, marker=".", label=r[1])
            ax.set_xticks(range(0, 21, 2))
            return True

        path = figure(out, f"{ds}_{row}_prompts_clicks.png", draw,
                      "clicks (first seeded, then at the largest error)", "test Dice",
                      f"{ds}, {NAMES[row]}: Dice against clicks by training prompts")
        print(f"wrote {path}", file=sys.stderr)


def per_case_dice(ev, prompt):
    """case -> Dice from an evaluation folder (nnU-Net's have no prompt subfolder)."""
    import csv

    path = os.path.join(ev, prompt, "per_case.csv")
    if not os.path.exists(path):
        path = os.path.join(ev, "per_case.csv")
    with open(path) as f:
        return {(r["case"], r["class"]): float(r["dice"]) for r in csv.DictReader(f)}


def paired(ds, prompt, a, b):
    """Per-case Dice of evaluation A minus B on the same test cases: mean, 95% interval
    (t), and on how many cases A is higher, lower or level."""
    from scipy import stats

    da, db = per_case_dice(a, prompt), per_case_dice(b, prompt)
    if da.keys() != db.keys():
        sys.exit(f"{a} and {b} scored different cases")
    diffs = [da[k] - db[k] for k in sorted(da)]
    n = len(diffs)
    if n < 2:
        sys.exit(f"{a} and {b}: {n} case(s) in common, too few to compare")
    mean = sum(diffs) / n
    sd = (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5
    half = stats.t.ppf(0.975, n - 1) * sd / n ** 0.5
    higher = sum(d > 0 for d in diffs)
    lower = sum(d < 0 for d in diffs)
    print(f"{ds} {prompt}: {a} - {b}: Dice {mean:+.3f} (95% CI {mean - half:+.3f} to "
          f"{mean + half:+.3f}), higher on {higher}, lower on {lower}, level on "
          f"{n - higher - lower} of {n} cases")


def epoch_curves(out, runs):
    """Validation Dice per epoch of any run folders (label=folder), in one picture."""
    def draw(ax):
        for label, run in (r.split("=", 1) for r in runs):
            ep = [e for e in epochs_of(run, None) if e.get("val_dice") is not None]
            ax.plot([e["epoch"] for e in ep], [e["val_dice"] for e in ep], marker="o", label=label)
        return bool(runs)

    path = figure(os.path.dirname(out) or ".", os.path.basename(out), draw, "epoch",
                  "validation Dice (mixed prompts)", "validation Dice per epoch")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1] == "--epochs":
        # --epochs OUT.png label=run_folder ...
        epoch_curves(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "--paired":
        # --paired DS PROMPT EVAL_A EVAL_B
        if len(sys.argv) != 6:
            sys.exit("usage: --paired DATASET click|box EVAL_A EVAL_B")
        paired(*sys.argv[2:6])
    elif sys.argv[1] == "--study":
        # --study DS ROW [--out DIR] label=folder ...
        rest = sys.argv[4:]
        out = None
        if rest[:1] == ["--out"]:
            out, rest = rest[1], rest[2:]
        study(sys.argv[2], sys.argv[3], rest, out)
    else:
        # TREE OUT [--also TREE ...]
        rest = sys.argv[3:]
        if len(rest) % 2 or any(flag != "--also" for flag in rest[::2]):
            sys.exit("usage: quality_report.py TREE OUT [--also TREE ...]")
        main([sys.argv[1]] + rest[1::2], sys.argv[2])
