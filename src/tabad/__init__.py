"""tabad: industrial visual anomaly detection with Text-Align Anomaly Backbones.

Importing this package is cheap: heavy dependencies (torch, torchvision, cv2,
matplotlib) are imported by the modules that need them, never here.
"""

__version__ = "0.1.0"
