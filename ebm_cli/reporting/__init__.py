"""The reporting side: console, TensorBoard, HParams, figures and metrics.json."""
