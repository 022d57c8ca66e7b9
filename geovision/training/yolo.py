"""Training YOLO detectors (ultralytics) on a chip dataset.

ultralytics (AGPL-3.0) is imported here and in the YOLO backend only.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from geovision.config import ModelConfig
from geovision.labels import ImageLabels, ImageShapes, LabelReport
from geovision.training.chips import ChipSet
from geovision.training.common import aerial_augmentations, package_run, start_weights, write_model_yaml
from geovision.training.run import Trainer, read_labels, read_polygons
from geovision.training.scoring import MIN_BOXES, chips_confidence

#: early stopping waits at least this many optimiser steps without a gain (and 50 epochs): fine-tuned
#: on a plot or two, an epoch is one step, and 50 of them stopped runs before they had learned anything
PATIENCE_STEPS = 400


class YoloTrainer(Trainer):
    """YOLO11 box detectors (task detect) and YOLO-seg instance segmenters (task instance), fitted by
    ultralytics' trainer."""

    def check(self) -> None:
        spec = self.spec
        if spec.weights and spec.weights.suffix == ".pt" and not spec.trust_weights:
            from geovision.backends.yolo import check_checkpoint

            check_checkpoint(spec.weights)  # before any work: a start that would run code is refused

    def network(self) -> str:
        return f"YOLO11{self.spec.model_size}{'-seg' * (self.spec.task == 'instance')}"

    def read(self, report: LabelReport) -> Sequence[ImageLabels | ImageShapes]:
        return read_polygons(self.spec, report) if self.spec.task == "instance" else read_labels(self.spec, report)

    def fit(self, chips: ChipSet, cfg: ModelConfig, package: Path, info: dict[str, Any]) -> ModelConfig:
        """Fit with ultralytics' trainer on the chip dataset; a box detector then takes the confidence of
        its best box F1 on the validation chips, unless one was given."""
        from geovision.backends.device import pick_device
        from geovision.backends.yolo import import_ultralytics, load_yolo

        spec, log = self.spec, self.log
        ultralytics = import_ultralytics()
        device = pick_device(spec.device)
        network = f"{self.network().lower()}.yaml"
        given = str(spec.weights) if spec.weights else network
        start = Path(given) if given.endswith(".pt") else None  # weights to start from, else a network YAML
        model = load_yolo(start, spec.trust_weights) if start else ultralytics.YOLO(given)
        if start and model.task != ("segment" if cfg.task == "instance" else "detect"):
            # another task's weights (a box detector starting a YOLO-seg): its backbone, neck and box head carry over
            model = ultralytics.YOLO(network).load(str(start))
        ran = {"epochs": 0}  # a time limit (options: time) changes the number of epochs on the way

        def on_epoch(trainer: Any) -> None:
            m = {k.split("/")[-1]: round(float(v), 3) for k, v in (trainer.metrics or {}).items() if "mAP" in k}
            done = trainer.epoch + 1
            ran["epochs"] = min(done, trainer.epochs)
            log(f"epoch {done}/{trainer.epochs} {m}" if done <= trainer.epochs else f"best weights {m}")

        model.add_callback("on_fit_epoch_end", on_epoch)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="geovision-train-") as tmp:
            args: dict[str, Any] = dict(
                data=str(chips.folder / "data.yaml"),
                epochs=spec.epochs,
                imgsz=cfg.tile_size,
                batch=spec.batch,
                device=device,
                workers=0,
                seed=spec.seed,
                deterministic=True,
                project=tmp,
                name="run",
                exist_ok=True,
                plots=False,
                verbose=False,
                # a .pt start is used only with pretrained left on (False rebuilds the network from its YAML)
                pretrained=start is not None,
                amp=device != "cpu",
                # no gain for 50 epochs, or PATIENCE_STEPS optimiser steps where an epoch is a few (a plot or two)
                patience=max(50, math.ceil(PATIENCE_STEPS / math.ceil(chips.train / spec.batch))),
                lr0=0.01,
                fliplr=0.5,
                flipud=0.5,
                degrees=0.0,
                scale=0.3,
                mosaic=1.0,
                hsv_v=0.3,
            )
            if device != "cpu":  # the GPU waits on chips otherwise: load them in worker processes
                args.update(workers=min(8, os.cpu_count() or 1))
            if spec.augment == "aerial":
                # random ground resolution around the model's (+-50 %) and stronger colour changes
                args.update(scale=0.5, hsv_h=0.02, hsv_s=0.5, hsv_v=0.4, augmentations=aerial_augmentations())
            if spec.time is not None:  # ultralytics' time is in hours
                args["time"] = spec.time / 60
            args.update(spec.options)
            with _amp_check_offline(), _cpu_threads_kept(model, device), _quiet_albumentations():
                model.train(**args)
            seconds = time.perf_counter() - started
            run = Path(tmp) / "run"
            best = run / "weights" / "best.pt"
            if not best.exists():
                best = run / "weights" / "last.pt"
            metrics = _last_metrics(run / "results.csv", "M" if cfg.task == "instance" else "B")
            package.mkdir(parents=True, exist_ok=True)
            weights = package / "weights.pt"
            shutil.copyfile(best, weights)
        record = {"epochs": ran["epochs"] or spec.epochs, "augment": spec.augment, "seconds": round(seconds, 1)}
        base = start_weights(start) if start else given
        packaged = package_run(cfg, weights, base, {**record, "device": device}, metrics, info)
        log(f"validation: {json.dumps(metrics)}")
        if cfg.task == "detect" and spec.confidence is None:
            packaged = self._choose_confidence(packaged, chips)
        return packaged

    def _choose_confidence(self, cfg: ModelConfig, chips: ChipSet) -> ModelConfig:
        """The detector with the confidence of its best box F1 on the validation chips; with too few
        boxes there to choose on, the one it has (a fine-tuned model's, or 0.25)."""
        from geovision.backends.yolo import YoloDetector

        detector = YoloDetector(cfg, device=self.spec.device)
        best = chips_confidence(lambda images, conf: detector.detect(images, conf), chips.folder)
        chosen = best["threshold"]
        if best["boxes"] < MIN_BOXES:
            chosen = cfg.confidence
            self.log(f"confidence: {chosen:g}, as it was: {best['boxes']} boxes on the validation chips are too few "
                     "to choose one on (give `confidence` to detect, or label more)")  # fmt: skip
        else:
            self.log(f"confidence: {chosen:g}, where box F1 on the validation chips is best ({best['f1']:.2f})")
        metrics = {**cfg.record.get("metrics", {}), "box_f1_iou_0.4": best["f1"], "at_confidence": best["threshold"]}
        packaged = replace(cfg, confidence=chosen, record={**cfg.record, "metrics": metrics})
        write_model_yaml(packaged, cfg.weights.parent / "model.yaml")
        return packaged


@contextlib.contextmanager
def _cpu_threads_kept(model: Any, device: str) -> Iterator[None]:
    """Keep the threads torch had through a CPU training run, and after it.

    ultralytics' device selection sets torch to one thread fewer than the
    machine's cores (``NUM_THREADS``), in the trainer and again in the final
    validation: on a 2-core machine, training ran on one core and left the
    process so. A callback restores the count before the first batch, and it
    is restored when the run ends.
    """
    import torch

    from geovision.backends.device import torch_threads

    threads = torch.get_num_threads()

    def restore(trainer: Any = None) -> None:
        torch_threads(device, threads)

    model.add_callback("on_pretrain_routine_start", restore)
    try:
        yield
    finally:
        restore()


@contextlib.contextmanager
def _quiet_albumentations() -> Iterator[None]:
    """Silence albumentations 2's false alarm when ultralytics restores our RGBShift from its dict.

    ultralytics hands the transforms to its data loader as ``A.to_dict`` dicts; RGBShift writes
    its parent class's noise arguments there and warns that they are not its own when read back,
    though it comes back with the same shifts. A user would take the warning for a broken recipe.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Argument\(s\) .* are not valid for transform RGBShift")
        yield


@contextlib.contextmanager
def _amp_check_offline() -> Iterator[None]:
    """Skip ultralytics' mixed-precision self-test for the length of one training run.

    On CUDA it downloads a pretrained model from GitHub to compare fp16 with
    fp32 output, which hangs or fails offline. Mixed precision is used as on
    any recent GPU; the patched name is restored when the run ends.
    """
    import ultralytics.engine.trainer as trainer

    saved = trainer.check_amp
    trainer.check_amp = lambda model: True
    try:
        yield
    finally:
        trainer.check_amp = saved


def _last_metrics(results_csv: Path, kind: str = "B") -> dict[str, float]:
    """Best-epoch validation metrics from ultralytics' results.csv: of boxes (``B``) or masks (``M``)."""
    if not results_csv.exists():
        return {}
    with open(results_csv) as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        return {}
    key = f"metrics/mAP50-95({kind})"
    best = max(rows, key=lambda r: float(r.get(key, 0) or 0))
    out: dict[str, float] = {"epoch": int(float(best["epoch"]))}
    for name in ("precision", "recall", "mAP50", "mAP50-95"):
        k = f"metrics/{name}({kind})"
        if k in best:
            out[name] = round(float(best[k]), 4)
    return out
