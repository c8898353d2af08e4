"""Triton kernel for one chunk of the fused sparse KD loss (the fast twin of ``chunk_loss_and_grad_torch``).

One program per row of the ``[chunk, V]`` logits buffer:

1. gather the K target logits (and the label's) into registers — they are about to be overwritten;
2. pass 1 over V: online max / sum-exp → LSE(z/T) (and LSE(z) when CE is mixed in at T ≠ 1); the row losses;
3. pass 2 over V (only when gradients are wanted): write the dense gradient
   ``kd_coef · S · softmax(z/T) / T + ce_coef · softmax(z)`` over the logits, in the logits' dtype;
4. after a block barrier, overwrite the K target slots (and the label slot) with their exact full gradient,
   computed in float32 from the gathered logits, so each element is rounded once. Duplicate ids (padding uses
   id 0) all store the same value, because each slot uses the total weight of its id.

With CSR targets (``CSR=True``) the row's labels are ``offsets[row]:offsets[row+1]`` of flat ``[L]`` id and weight
arrays: the same steps over a row-dependent count, BLOCK_K sized by the widest row.

Imported lazily (only when the Triton backend is chosen), so the package works without triton installed. Runs on
CPU tensors under ``TRITON_INTERPRET=1`` for the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _sparse_kd_rows_kernel(
    logits_ptr,
    logits_row_stride,
    ids_ptr,
    weights_ptr,
    targets_row_stride,
    offsets_ptr,
    labels_ptr,
    kd_coef_ptr,
    ce_coef_ptr,
    kd_out_ptr,
    ce_out_ptr,
    V,
    K,
    inv_temperature,
    ignore_index,
    HAS_CE: tl.constexpr,
    SEPARATE_CE_LSE: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    CSR: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * logits_row_stride
    if CSR:
        target_ptr = tl.load(offsets_ptr + row)
        num_targets = tl.load(offsets_ptr + row + 1) - target_ptr
    else:
        target_ptr = row * targets_row_stride
        num_targets = K
    k_offsets = tl.arange(0, BLOCK_K)
    k_valid = k_offsets < num_targets
    ids = tl.load(ids_ptr + target_ptr + k_offsets, mask=k_valid, other=0).to(tl.int64)
    weights = tl.load(weights_ptr + target_ptr + k_offsets, mask=k_valid, other=0.0).to(tl.float32)
    z_targets = tl.load(row_ptr + ids, mask=k_valid, other=0.0).to(tl.float32)

    # Pass 1: online log-sum-exp of z / T (and of z for the CE term when T != 1).
    m_t = -float("inf")
    s_t = 0.0
    m_1 = -float("inf")
    s_1 = 0.0
    for start in range(0, V, BLOCK_V):
        offsets = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + offsets, mask=offsets < V, other=-float("inf")).to(tl.float32)
        x_t = x * inv_temperature
        new_m_t = tl.maximum(m_t, tl.max(x_t, axis=0))
        s_t = s_t * tl.exp(m_t - new_m_t) + tl.sum(tl.exp(x_t - new_m_t), axis=0)
        m_t = new_m_t
        if SEPARATE_CE_LSE:
            new_m_1 = tl.maximum(m_1, tl.max(x, axis=0))
            s_1 = s_1 * tl.exp(m_1 - new_m_1) + tl.sum(tl.exp(x - new_m_1), axis=0)
            m_1 = new_m_1
    lse_t = m_t + tl.log(s_t)
    lse_1 = lse_t
    if SEPARATE_CE_LSE:
        lse_1 = m_1 + tl.log(s_1)

    total_weight = tl.sum(weights, axis=0)
    w_log_w = tl.sum(tl.where(weights > 0, weights * tl.log(tl.maximum(weights, 1e-38)), 0.0), axis=0)
    # weight-0 slots and rows add exactly 0, even at a -inf logit (0 * -inf is NaN); a NaN weight stays NaN
    w_z = tl.sum(tl.where(weights != 0, weights * z_targets, 0.0), axis=0) * inv_temperature
    kd = w_log_w - w_z + tl.where(total_weight != 0, total_weight * lse_t, 0.0)
    tl.store(kd_out_ptr + row, kd)

    label = 0
    label_valid = False
    z_label = 0.0
    if HAS_CE:
        label = tl.load(labels_ptr + row).to(tl.int64)
        label_valid = label != ignore_index
        label = tl.where(label_valid, label, 0)
        z_label = tl.load(row_ptr + label).to(tl.float32)
        tl.store(ce_out_ptr + row, tl.where(label_valid, lse_1 - z_label, 0.0))

    if COMPUTE_GRAD:
        kd_coef = tl.load(kd_coef_ptr + row).to(tl.float32)
        kd_scale = kd_coef * inv_temperature
        dense_kd = kd_scale * total_weight
        ce_coef = 0.0
        if HAS_CE:
            ce_coef = tl.load(ce_coef_ptr + row).to(tl.float32)
        # Pass 2: the dense part of the gradient, in place.
        for start in range(0, V, BLOCK_V):
            offsets = start + tl.arange(0, BLOCK_V)
            in_row = offsets < V
            x = tl.load(row_ptr + offsets, mask=in_row, other=0.0).to(tl.float32)
            grad = dense_kd * tl.exp(x * inv_temperature - lse_t)
            if HAS_CE:
                grad += ce_coef * tl.exp(x - lse_1)
            tl.store(row_ptr + offsets, grad.to(logits_ptr.dtype.element_ty), mask=in_row)
        tl.debug_barrier()
        # Sparse slots: the full gradient from the gathered logits, using each id's total weight.
        id_weight = tl.zeros([BLOCK_K], dtype=tl.float32)
        for j in range(0, num_targets):
            id_j = tl.load(ids_ptr + target_ptr + j).to(tl.int64)
            w_j = tl.load(weights_ptr + target_ptr + j).to(tl.float32)
            id_weight += tl.where(ids == id_j, w_j, 0.0)
        slot_grad = dense_kd * tl.exp(z_targets * inv_temperature - lse_t) - kd_scale * id_weight
        if HAS_CE:
            is_label = label_valid & (ids == label)
            slot_grad += ce_coef * tl.exp(z_targets - lse_1) - tl.where(is_label, ce_coef, 0.0)
            label_weight = tl.sum(tl.where(k_valid & (ids == label), weights, 0.0), axis=0)
            label_grad = (
                dense_kd * tl.exp(z_label * inv_temperature - lse_t)
                - kd_scale * label_weight
                + ce_coef * tl.exp(z_label - lse_1)
                - ce_coef
            )
            tl.store(row_ptr + label, label_grad.to(logits_ptr.dtype.element_ty), mask=label_valid)
        tl.store(row_ptr + ids, slot_grad.to(logits_ptr.dtype.element_ty), mask=k_valid)


def launch_config(vocab_size: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps): wide blocks for the long rows of big vocabularies, as Liger's CE kernel uses."""
    block = min(32768, triton.next_power_of_2(max(vocab_size, 16)))
    warps = 32 if block >= 32768 else 16 if block >= 8192 else 8 if block >= 2048 else 4
    return block, warps


def chunk_loss_and_grad_triton(
    logits: torch.Tensor,
    target_ids: torch.Tensor,
    target_weights: torch.Tensor,
    labels: torch.Tensor | None,
    kd_coef: torch.Tensor,
    ce_coef: torch.Tensor | None,
    inv_temperature: float,
    ignore_index: int,
    compute_grad: bool,
    *,
    offsets: torch.Tensor | None = None,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as :func:`sparselabels.loss.fused.chunk_loss_and_grad_torch` (Triton, float32 arithmetic)."""
    rows, vocab_size = logits.shape
    csr = offsets is not None
    if csr and width is None:
        raise ValueError("CSR targets need width (the most labels of one row) to size the kernel")
    k = width if csr else target_ids.shape[1]
    if logits.stride(1) != 1:
        raise ValueError("the logits chunk must be contiguous along the vocabulary")
    target_ids = target_ids.contiguous()
    target_weights = target_weights.contiguous()
    kd_rows = torch.empty(rows, dtype=torch.float32, device=logits.device)
    ce_rows = torch.empty(rows, dtype=torch.float32, device=logits.device) if labels is not None else None
    if rows == 0:
        return kd_rows.to(kd_coef.dtype), ce_rows
    block_v, num_warps = launch_config(vocab_size)
    has_ce = labels is not None
    dummy = kd_rows  # an unused pointer argument for the CE inputs when CE is off
    _sparse_kd_rows_kernel[(rows,)](
        logits,
        logits.stride(0),
        target_ids,
        target_weights,
        0 if csr else target_ids.stride(0),
        offsets.contiguous() if csr else dummy,
        labels.contiguous() if has_ce else dummy,
        kd_coef.to(torch.float32).contiguous(),
        ce_coef.to(torch.float32).contiguous() if has_ce else dummy,
        kd_rows,
        ce_rows if has_ce else dummy,
        vocab_size,
        k,
        float(inv_temperature),
        int(ignore_index),
        HAS_CE=has_ce,
        SEPARATE_CE_LSE=has_ce and inv_temperature != 1.0,
        COMPUTE_GRAD=compute_grad,
        CSR=csr,
        BLOCK_V=block_v,
        BLOCK_K=max(16, triton.next_power_of_2(max(k, 1))),
        num_warps=num_warps,
    )
    out_dtype = kd_coef.dtype
    return kd_rows.to(out_dtype), ce_rows.to(out_dtype) if ce_rows is not None else None
