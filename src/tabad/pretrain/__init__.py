"""TAB pre-training (paper §3, supplementary Algorithm 1), on any backbone family.

* :mod:`tabad.pretrain.model`   visual encoder: backbone → GAP → projection → L2 norm
* :mod:`tabad.pretrain.loss`    the anomaly-text-aware loss and its ablations
* :mod:`tabad.pretrain.data`    normal images + synthetic anomalies, seeded per (epoch, index);
  the held-out monitor images
* :mod:`tabad.pretrain.freeze`  what trains: ``--bn-stats {train,frozen}`` (default by initial
  weights: ``DEFAULT_BN_STATS``) and ``--freeze-stages N`` (stages per family)
* :mod:`tabad.pretrain.cka`     feature damage: plain linear CKA of layer2/layer3 patch features
  to the initial backbone on held-out images, and the collapse warning
* :mod:`tabad.pretrain.trainer` the loop: schedule, AMP, DDP, checkpoints, resume, per-epoch monitor

The checkpoint (``backbone.pt``) is a plain state dict in the family's public key
layout (torchvision for ResNets, timm ``tf_efficientnet_*`` for EfficientNets),
including the initial ImageNet classifier, frozen and unchanged, so that it loads
with ``strict=True``; inputs are normalised with ``family.normalisation(arch)``.
"""
