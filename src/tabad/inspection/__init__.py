"""From benchmark to inspection: fit on good parts, calibrated thresholds, predict on new images.

* :mod:`~tabad.inspection.thresholds`: threshold rules (target false-positive
  rate on held-out normal images, F1-max, target recall) and the score
  normalisation that puts the threshold at 0.5;
* :mod:`~tabad.inspection.pipeline`: :class:`InspectionModel`, one
  ``nn.Module`` from uint8 images to scores, verdicts, maps and masks
  (resizing, normalisation, the method, thresholds), the graph that is
  exported;
* :mod:`~tabad.inspection.fit`: ``tabad fit``;
* :mod:`~tabad.inspection.predict`: ``tabad predict`` (CSV, JSONL, overlays, masks; resumable).
* :mod:`~tabad.inspection.export`: ``tabad export`` (one ONNX file: uint8 images in, verdicts, maps and
  masks out; the model file's header in its metadata);
* :mod:`~tabad.inspection.onnx`: :class:`OnnxInspectionModel`, exported models through ONNX Runtime with
  the interface ``tabad predict`` uses.
"""
