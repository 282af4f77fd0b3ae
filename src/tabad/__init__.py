"""tabad: industrial visual anomaly detection with Text-Align Anomaly Backbones.

Importing this package is cheap: heavy dependencies (torch, torchvision, cv2,
matplotlib) are imported by the modules that need them, never here.
"""

from tabad.version import __version__  # noqa: F401


def load_model(path, device: str = "cpu"):
    """A fitted model file as an :class:`~tabad.inspection.pipeline.InspectionModel`:
    ``tabad.load_model("model.tabad").predict(["part.png"])``."""
    from tabad.inspection.pipeline import load_inspection

    return load_inspection(path, device=device)
