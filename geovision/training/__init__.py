"""Training models from GeoTIFFs and vector or pixel labels into model packages.

One run (:func:`train`) reads labels, cuts chips with the inference reader
(:mod:`.chips`), trains a YOLO detector (:mod:`.yolo`) or an smp segmenter
(:mod:`.smp`) and writes a package that ``geovision detect`` runs.
"""

from geovision.training.run import TrainSpec, load_train_config, spec_from_mapping, train, train_spec, without_sites

__all__ = ["TrainSpec", "load_train_config", "spec_from_mapping", "train", "train_spec", "without_sites"]
