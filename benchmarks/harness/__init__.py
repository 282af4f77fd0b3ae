"""The side-by-side harness: what every ``<method>_vs_anomalib.py`` comparison shares.

Four modules, split by the interpreter that imports them:

``harness.sidebyside`` (tabad's interpreter, the driver)
    The same inputs for both libraries (``--sets`` parsing, the one weights file, tabad's
    decode as lossless PNGs, tabad's training order), each library as a child process
    (``run_tabad`` / ``run_anomalib``: wall and CPU time and peak RSS from ``os.wait4``, the
    fit/predict phases each child reports, thread settings, the fixed
    ``MALLOC_MMAP_THRESHOLD_``), both libraries' saved predictions scored by the same
    ``tabad.metrics.evaluate`` (``score_pair``), provenance, the common command line and
    ``--render-only``.
``harness.report`` (either interpreter; standard library only)
    The report skeleton: number formatting, Markdown tables, the shared header, accuracy
    and provenance blocks, and the atomic ``.md`` + ``.json`` writer.
``harness.anomalib_side`` (anomalib's interpreter, the runners; never imports tabad)
    The ``Folder`` datamodule with its mask pairing checked, the pre-processing transform,
    the Evaluator metrics, backbone weights loading, raw-output capture, test-batch
    recording, stage timing, saving ``predictions.npz`` and ``anomalib.json``.
``harness.latency`` (either interpreter; standard library + numpy, the runtime imported lazily)
    The inference-latency child of ``export_latency.py``: one runtime (tabad PyTorch, tabad
    ONNX, bare ONNX Runtime, OpenVINO), one model, one batch size per process, the same timing
    loop, warm-up and image stream for all; per-call times, RSS marks (``VmHWM``) and outputs.

A new comparison (``<method>_vs_anomalib.py`` + ``anomalib_<method>_runner.py``) supplies
only what is specific to its method: the runner's model and hooks, the driver's extra
inputs and the report's method-specific tables and notes.
"""
