"""Defaults of ``tabad fit`` that a newcomer can rely on (plain data: the CLI shows them without importing torch).

PatchCore needs no training and no tuning; EfficientNet-Lite0 is the best
backbone whose ImageNet weights are available offline (installed with tabad).
"""

DEFAULT_METHOD = "patchcore"
DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_WEIGHTS = "imagenet"
DEFAULT_FPR = 0.01
DEFAULT_CALIBRATION_SHARE = 0.2

# ``tabad serve``
SERVE_HOST = "127.0.0.1"  # loopback only unless --host says otherwise
SERVE_PORT = 8000
SERVE_MAX_UPLOAD_MB = 20.0
SERVE_MAX_MEGAPIXELS = 40.0
SERVE_MAX_QUEUE = 64
SERVE_MAX_BATCH = 8
