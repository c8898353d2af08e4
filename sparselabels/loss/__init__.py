"""Losses that train a student from sparse teacher targets (and the baselines to compare them with).

* :func:`sparse_kd_loss` — KL(t̂ ‖ p) on materialised student logits, p the softmax over the full vocabulary.
* :func:`sparse_kd_loss_from_hidden` — the same loss fused with the LM head, chunked, never holding
  ``[tokens x vocab]`` logits; optionally mixed with cross-entropy on the ground-truth labels.
* Baselines: :func:`full_kd_loss`, :func:`full_kd_loss_from_logits`, :func:`topk_kd_loss`,
  :func:`ghost_topk_kd_loss`.
* :func:`csr_to_padded` — stored CSR label rows → padded ``[R, K]`` targets.

The sparse losses take targets padded (``target_ids``, ``target_weights``) or as one
:class:`~sparselabels.data.SparseTargets` (the ``layout="csr"`` batch), which they read without padding.

Temperature divides the student logits only and no loss is multiplied by T² (see :mod:`.sparse_kd`).
"""

from sparselabels._extras import require

require("sparselabels.loss", "torch")

from sparselabels.loss.baselines import full_kd_loss, full_kd_loss_from_logits, ghost_topk_kd_loss, topk_kd_loss
from sparselabels.loss.fused import sparse_kd_loss_from_hidden
from sparselabels.loss.sparse_kd import sparse_kd_loss
from sparselabels.loss.targets import csr_to_padded

__all__ = [
    "csr_to_padded",
    "full_kd_loss",
    "full_kd_loss_from_logits",
    "ghost_topk_kd_loss",
    "sparse_kd_loss",
    "sparse_kd_loss_from_hidden",
    "topk_kd_loss",
]
