"""TAB pre-training (paper §3, supplementary Algorithm 1).

* :mod:`tabad.pretrain.model`   visual encoder: backbone → GAP → projection → L2 norm
* :mod:`tabad.pretrain.loss`    the anomaly-text-aware loss and its ablations
* :mod:`tabad.pretrain.data`    normal images + synthetic anomalies, seeded per (epoch, index)
* :mod:`tabad.pretrain.trainer` the loop: schedule, AMP, DDP, checkpoints, resume
"""
