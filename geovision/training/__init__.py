"""Training models from GeoTIFFs and vector or pixel labels into model packages.

A run's settings (:class:`TrainSpec`, :mod:`.spec`) go to :func:`train`, which reads labels,
cuts chips with the inference reader (:mod:`.chips`), fits the network of the kind of run
(:mod:`.yolo`, :mod:`.smp`, :mod:`.centres`) and writes a package that ``geovision detect`` runs.
"""

from geovision.training.run import train
from geovision.training.spec import TrainSpec, load_train_config, spec_from_mapping, train_spec, without_sites

__all__ = ["TrainSpec", "load_train_config", "spec_from_mapping", "train", "train_spec", "without_sites"]
