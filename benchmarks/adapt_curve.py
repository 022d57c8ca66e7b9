"""How well a model adapts to a forest it never saw, from a few labelled plots.

    python benchmarks/adapt_curve.py configs/training/trees.yaml --start runs/trees-stage1 \\
        --sites TEAK SJER --plots 1 3 10 --work runs/adapt

For each held-out site of the training config and each count N, N labelled
plots of the site (drawn with a fixed seed) fine-tune ``--start`` exactly as a
user would, ``geovision train detect --weights START --images ... --labels ...
--classes ...`` with no other option; the tuned model then runs with its
default settings on the site's other plots (a plot flown in two years is one
plot: neither flight is scored when either trained). N = 0 scores the start
model as it is. ``--start`` must not have trained on the site. Box F1 at IoU
0.4 (DeepForest's metric) and the wall-clock minutes of each fine-tuning are
printed as a Markdown table and written to ``WORK/adapt.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

from eval_models import Counts, predict, score, sites_seen_by, truth_layer

import geovision
from geovision.training import load_train_config, spec_from_mapping
from geovision.training.spec import per_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="training YAML with datasets by site")
    ap.add_argument("--start", required=True, help="the model to adapt: a name, package folder or model YAML")
    ap.add_argument("--sites", nargs="+", required=True)
    ap.add_argument("--plots", nargs="+", type=int, default=[1, 3, 10], help="labelled plots to fine-tune on")
    ap.add_argument("--work", type=Path, required=True, help="folder for tuned models (resumable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iou", type=float, default=0.4)
    ap.add_argument(
        "--train-args",
        default="",
        help="extra `geovision train detect` flags, for experiments "
        '(e.g. "--lr 3e-4 --time 15m"); leave out to measure the command a user runs',
    )
    args = ap.parse_args()
    spec = spec_from_mapping(load_train_config(args.config))
    start = geovision.resolve_model(args.start)
    seen = set(args.sites) & sites_seen_by(start.weights)
    if seen:
        raise SystemExit(f"{args.start} trained on {', '.join(sorted(seen))}: it would not be adapting")
    labels = per_image(spec.labels, len(spec.images))
    rows, out = [], {}
    args.work.mkdir(parents=True, exist_ok=True)
    for site in args.sites:
        idx = [i for i, s in enumerate(spec.sites or ()) if s == site]
        plots = sorted({spec.images[i].stem for i in idx})
        random.Random(args.seed).shuffle(plots)
        for n in sorted({0, *args.plots}):
            chosen = set(plots[:n])
            train_idx = [next(i for i in idx if spec.images[i].stem == p) for p in plots[:n]]  # one flight a plot
            model, minutes = start, 0.0
            if n:
                folder = args.work / f"{site}-{n}"
                if not (folder / "model.yaml").is_file():
                    cmd = [sys.executable, "-m", "geovision.cli.main", "train", "detect", "--weights", args.start]
                    cmd += ["--images", *(str(spec.images[i]) for i in train_idx)]
                    cmd += ["--labels", *(str(labels[i]) for i in train_idx)]
                    cmd += ["--classes", *spec.classes, "-o", str(folder), "-q", *shlex.split(args.train_args)]
                    t0 = time.perf_counter()
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                    (args.work / f"{site}-{n}.minutes").write_text(f"{(time.perf_counter() - t0) / 60:.2f}")
                model = geovision.resolve_model(folder)
                minutes = float((args.work / f"{site}-{n}.minutes").read_text())
            counts = Counts()
            scored = [i for i in idx if spec.images[i].stem not in chosen]
            for i in scored:
                truth = truth_layer(spec, spec.images[i], labels[i])
                pred, _, _ = predict(model, spec, spec.images[i])
                counts.add(score(pred, truth.to_crs(pred.crs) if pred.crs else truth, args.iou, True))
            p, r, f1 = counts.prf()
            rows.append(f"| {site} | {n} | {len(scored)} | {counts.tp + counts.fn} | {p:.2f} / {r:.2f} / **{f1:.2f}** "
                        f"| {minutes:.1f} |")  # fmt: skip
            out[f"{site}-{n}"] = {"precision": p, "recall": r, "f1": f1, "minutes": minutes, "plots": sorted(chosen)}
            print(rows[-1], flush=True)
    print(f"\n| site | labelled plots | plots scored | crowns | box IoU {args.iou} P / R / F1 | fine-tuning min |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    (args.work / "adapt.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
