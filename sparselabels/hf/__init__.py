"""Hugging Face training: :class:`SparseKDTrainer` (a ``transformers.Trainer``) and :func:`kd_loss` for own loops.

See ``docs/training.md``. Importing this needs ``transformers``; no GPU.
"""

from sparselabels._extras import require

require("sparselabels.hf", "torch", "transformers", extras="hf")

from sparselabels.hf.kd_loss import count_positions, final_hidden, kd_loss, lm_head_weight, next_token_labels
from sparselabels.hf.trainer import SparseKDTrainer, default_collator

__all__ = [
    "SparseKDTrainer",
    "count_positions",
    "default_collator",
    "final_hidden",
    "kd_loss",
    "lm_head_weight",
    "next_token_labels",
]
