"""Sparse KD loss fused with the LM head: ``hidden @ W.T`` is never materialised for all tokens at once.

The tokens are processed in chunks of ``chunk_size`` rows. For each chunk the forward pass

1. computes the chunk's logits ``z = h_c @ W.T`` (``[chunk, V]``, the only vocabulary-sized buffer),
2. computes per row the log-sum-exp, the KD loss (and the cross-entropy on ``labels`` when mixed in), and
   **overwrites the logits in place with dL/dz** — the dense part ``(Σ_k w_k) · softmax(z/T) / T`` plus the sparse
   correction ``-w_k / T`` at the K target ids (and ``softmax(z) - onehot(label)`` for the CE part),
3. accumulates ``grad_hidden[c] = dL/dz @ W`` and ``grad_W += dL/dz.T @ h_c``.

Why gradients in the forward pass (as Liger-Kernel does) rather than recomputing logits in backward (as Cut
Cross-Entropy does): it costs 3 LM-head-sized matmuls in total, exactly what plain cross-entropy on materialised
logits costs, whereas recomputation costs 4; the time target (≤ 1.1x plain CE) leaves no room for a fourth. The
price: the forward pass holds ``grad_W`` (float32 for half-precision weights, so chunks accumulate without bf16
rounding) and ``grad_hidden`` until backward, and the loss must be a scalar — ``reduction="none"`` is offered only
when no gradient is needed. Backward just scales the stored gradients by the incoming scalar gradient.

Step 2 has two interchangeable implementations with the same signature: a PyTorch one (any device, the slow and
obviously correct twin) and a Triton kernel (:mod:`sparselabels.loss.triton_kernels`, used on CUDA by default),
which makes two passes over each row in place and rounds each gradient element once.

Targets are padded ``[..., K]`` or one :class:`~sparselabels.data.SparseTargets` (CSR): then each chunk reads its
rows' labels through the offsets (the Triton kernel loads ``offsets[row]``; the PyTorch twin gathers per label and
sums per row with ``index_add``), nothing is padded to K, and the weights are formed on the device.

Conventions (temperature on the student only, no T² factor, ``Σ w log w`` included, masks) are those of
:mod:`sparselabels.loss.sparse_kd`. With ``ce_weight`` = alpha the loss is ``(1 - alpha) · KD + alpha · CE``; the CE
term is at temperature 1 (ground-truth labels are hard targets), over positions selected by ``mask`` whose label is not
``ignore_index``, and ``reduction="mean"`` averages each term over its own positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparselabels.data.targets import SparseTargets
from sparselabels.errors import InputError, check_int
from sparselabels.loss.checks import (
    check_label_values,
    check_position_tensor,
    check_reduction,
    check_sparse_targets,
    check_target_tensors,
    check_target_values,
)
from sparselabels.loss.sparse_kd import compute_dtype, kd_label_losses, kd_row_losses
from sparselabels.options import check_temperature

BACKENDS = ("auto", "torch", "triton")
#: Bytes allowed for the one ``[chunk, V]`` buffer when ``chunk_size`` is not given.
CHUNK_BYTES_CUDA = 1 << 30
CHUNK_BYTES_CPU = 32 << 20


def sparse_kd_loss_from_hidden(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    target_ids: torch.Tensor | SparseTargets,
    target_weights: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    ce_weight: float = 0.0,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    backend: str = "auto",
    check_inputs: bool = True,
) -> torch.Tensor:
    """``(1 - ce_weight) · KL(t̂ ‖ softmax(hidden @ W.T / T)) + ce_weight · CE(labels)``, chunked, own backward.

    Args:
        hidden: ``[..., H]`` final hidden states (float32/bf16/fp16/float64), computed in their own dtype
            (autocast does not change it). The gradient w.r.t. the logits is kept in that dtype: prefer bfloat16
            to float16, whose range flushes the softmax tail of large vocabularies to 0 (a loss scale does not
            help here: the gradient is formed in the forward, before the scale is known).
        lm_head_weight: ``[V, H]`` LM-head weight, same dtype and device (no bias).
        target_ids, target_weights: ``[..., K]`` sparse targets as in :func:`sparse_kd_loss`, or one
            :class:`~sparselabels.data.SparseTargets` of shape ``hidden.shape[:-1]`` in place of the pair.
        labels: ``[...]`` int ground-truth next tokens (required when ``ce_weight > 0``); ``ignore_index`` skips one.
        ce_weight: alpha in ``[0, 1]``.
        chunk_size: rows per chunk; default fits one ``[chunk, V]`` buffer in 1 GiB on CUDA, 32 MiB on CPU.
        temperature: divides the student logits of the KD term; no T² factor.
        mask: ``[...]`` bool, positions that count (for both terms).
        reduction: ``"mean"`` or ``"sum"``; ``"none"`` (per position, ``[...]``) only when no gradient is needed.
        backend: ``"auto"`` (Triton on CUDA when importable, else PyTorch), ``"torch"`` or ``"triton"``.
        check_inputs: check id/label range and weight values (one host sync per check on GPU).
    """
    problem = _prepare(
        hidden, lm_head_weight, target_ids, target_weights, labels=labels, ce_weight=ce_weight,
        chunk_size=chunk_size, temperature=temperature, mask=mask, reduction=reduction,
        ignore_index=ignore_index, backend=backend, check_inputs=check_inputs,
    )
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad)
    if not needs_grad:
        with torch.no_grad():
            loss, _, _ = _run_chunks(problem, hidden.reshape(-1, hidden.shape[-1]), lm_head_weight, False, False)
        return loss.reshape(hidden.shape[:-1]) if reduction == "none" else loss
    if reduction == "none":
        raise InputError(
            "reduction='none' is not available with gradients in the fused loss (gradients are formed in the "
            "forward pass for a scalar loss); use 'mean' or 'sum', or sparse_kd_loss on materialised logits"
        )
    return _FusedSparseKD.apply(hidden, lm_head_weight, problem)


@dataclass
class _Problem:
    """Flattened, validated inputs plus the per-row loss coefficients (which already hold mask and reduction)."""

    target_ids: torch.Tensor  # [N, K] int32/int64; CSR: [L] int32
    target_weights: torch.Tensor  # [N, K] compute dtype; CSR: [L]
    offsets: torch.Tensor | None  # CSR: [N + 1] int64 (row r holds labels offsets[r]:offsets[r+1]); padded: None
    width: int  # the most labels of one row
    labels: torch.Tensor | None  # [N] int64, or None without CE
    kd_coef: torch.Tensor  # [N] compute dtype
    ce_coef: torch.Tensor | None  # [N] compute dtype
    inv_temperature: float
    ignore_index: int
    chunk_size: int
    backend: str
    reduction: str


def _prepare(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target_ids: torch.Tensor | SparseTargets,
    target_weights: torch.Tensor | None,
    *,
    labels: torch.Tensor | None,
    ce_weight: float,
    chunk_size: int | None,
    temperature: float,
    mask: torch.Tensor | None,
    reduction: str,
    ignore_index: int,
    backend: str,
    check_inputs: bool,
) -> _Problem:
    _check_hidden_and_weight(hidden, weight)
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    alpha = _check_ce_weight(ce_weight, labels)
    ignore_index = check_int("ignore_index", ignore_index, None)
    leading = hidden.shape[:-1]
    vocab_size = weight.shape[0]
    num_rows = math.prod(leading)
    dtype = compute_dtype(hidden.dtype)
    if isinstance(target_ids, SparseTargets) or target_weights is None:
        csr = check_sparse_targets(leading, target_ids, target_weights, mask, device=hidden.device, source="hidden",
                                   vocab_size=vocab_size, check_values=check_inputs)
        flat_ids, flat_weights, offsets, width = csr.ids, csr.weights(dtype), csr.offsets, csr.width
    else:
        check_target_tensors(leading, target_ids, target_weights, mask, device=hidden.device, source="hidden")
        if check_inputs:
            check_target_values(target_ids, target_weights, vocab_size)
        width = target_ids.shape[-1]
        flat_ids = target_ids.reshape(num_rows, width)
        flat_weights = target_weights.detach().reshape(num_rows, width).to(dtype)
        offsets = None
    selected = (
        mask.reshape(num_rows) if mask is not None else torch.ones(num_rows, dtype=torch.bool, device=hidden.device)
    )
    kd_coef = _row_coefficients(selected, 1.0 - alpha, reduction, dtype)
    flat_labels = ce_coef = None
    if labels is not None:  # checked even when ce_weight is 0: wrong labels are a bug either way
        check_position_tensor(
            "labels", labels, leading, device=hidden.device, source="hidden", dtype=(torch.int64, torch.int32)
        )
        if check_inputs:
            check_label_values(labels, vocab_size, ignore_index)
    if alpha > 0:
        assert labels is not None
        flat_labels = labels.reshape(num_rows).long()
        ce_coef = _row_coefficients(selected & (flat_labels != ignore_index), alpha, reduction, dtype)
    return _Problem(
        target_ids=flat_ids,
        target_weights=flat_weights,
        offsets=offsets,
        width=width,
        labels=flat_labels,
        kd_coef=kd_coef,
        ce_coef=ce_coef,
        inv_temperature=1.0 / temperature,
        ignore_index=ignore_index,
        chunk_size=_chunk_rows(chunk_size, num_rows, vocab_size, hidden),
        backend=_resolve_backend(backend, hidden.device, hidden.dtype),
        reduction=reduction,
    )


class _FusedSparseKD(torch.autograd.Function):
    """Forward computes the loss and both gradients chunk by chunk; backward scales them by the output gradient."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, problem: _Problem) -> torch.Tensor:  # type: ignore[override]
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        loss, grad_hidden, grad_weight = _run_chunks(
            problem, flat_hidden, weight, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        ctx.hidden_shape = hidden.shape
        ctx.hidden_dtype = hidden.dtype
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: the gradients were computed in the forward, without a graph
            raise InputError("sparse_kd_loss_from_hidden has no second derivative (backward with create_graph=True); "
                             "use sparse_kd_loss on materialised logits for higher-order gradients")
        grad_hidden, grad_weight = ctx.saved_tensors
        out_hidden = out_weight = None
        if grad_hidden is not None:
            out_hidden = _scaled(grad_hidden, grad_output, ctx.hidden_dtype).reshape(ctx.hidden_shape)
        if grad_weight is not None:
            out_weight = _scaled(grad_weight, grad_output, ctx.weight_dtype)
        return out_hidden, out_weight, None


def _scaled(stored: torch.Tensor, grad_output: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``stored * grad_output`` cast to ``dtype`` in one kernel (no float32 temporary of the weight's size).

    A float16 gradient is scaled in float32: a loss scale such as GradScaler's 65,536 is inf in float16 (bfloat16
    has float32's range and keeps the one-kernel path). Not in place: a second backward through a retained graph
    must find the stored gradient unchanged.
    """
    if stored.dtype == torch.float16:
        return (stored.float() * grad_output.float()).to(dtype)
    out = torch.empty(stored.shape, dtype=dtype, device=stored.device)
    return torch.mul(stored, grad_output.to(stored.dtype), out=out)


def _run_chunks(
    problem: _Problem, hidden: torch.Tensor, weight: torch.Tensor, want_grad_hidden: bool, want_grad_weight: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The loss (scalar, or per row for ``reduction="none"``) and, when asked, dL/dhidden and dL/dW."""
    num_rows = hidden.shape[0]
    compute_grad = want_grad_hidden or want_grad_weight
    chunk_fn = _chunk_function(problem.backend)
    grad_hidden = torch.empty_like(hidden) if want_grad_hidden else None
    grad_weight = (
        torch.zeros(weight.shape, dtype=compute_dtype(weight.dtype), device=weight.device) if want_grad_weight else None
    )
    per_row = torch.zeros(num_rows, dtype=problem.kd_coef.dtype, device=hidden.device)
    # in the inputs' own dtypes: under autocast the chunk product would come out in another dtype than the
    # gradient buffers (and the loss's numerics are chosen per dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, num_rows, problem.chunk_size):
            stop = min(start + problem.chunk_size, num_rows)
            hidden_chunk = hidden[start:stop]
            logits = hidden_chunk @ weight.t()  # [chunk, V], overwritten with dL/dz below
            kd_coef = problem.kd_coef[start:stop]
            ce_coef = problem.ce_coef[start:stop] if problem.ce_coef is not None else None
            csr = problem.offsets is not None  # CSR: the whole label arrays, the chunk's rows' offsets into them
            kd_rows, ce_rows = chunk_fn(
                logits,
                problem.target_ids if csr else problem.target_ids[start:stop],
                problem.target_weights if csr else problem.target_weights[start:stop],
                problem.labels[start:stop] if problem.labels is not None else None,
                kd_coef,
                ce_coef,
                problem.inv_temperature,
                problem.ignore_index,
                compute_grad,
                offsets=problem.offsets[start:stop + 1] if csr else None,
                width=problem.width,
            )
            # a row of coefficient 0 (masked out, ignored) adds exactly 0, even if its logits overflowed
            rows = torch.where(kd_coef != 0, kd_rows * kd_coef, 0.0)
            if ce_rows is not None:
                rows = rows + torch.where(ce_coef != 0, ce_rows * ce_coef, 0.0)
            per_row[start:stop] = rows
            if grad_hidden is not None:
                torch.mm(logits, weight, out=grad_hidden[start:stop])
            if grad_weight is not None:
                accumulate_weight_grad(grad_weight, logits, hidden_chunk)
    loss = per_row if problem.reduction == "none" else per_row.sum()
    return loss, grad_hidden, grad_weight


def chunk_loss_and_grad_torch(
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
    """Per-row KD (and CE) losses of one chunk; with ``compute_grad``, ``logits`` is overwritten with dL/dz.

    dL/dz_j = kd_coef · (S · softmax(z/T)_j - Σ_k w_k [id_k = j]) / T + ce_coef · (softmax(z)_j - [j = label]),
    S = Σ_k w_k. The PyTorch twin of the Triton kernel: same signature, float32 (float64) arithmetic.

    Targets are ``[rows, K]``, or with ``offsets`` (``[rows + 1]`` int64) CSR: row r holds labels
    ``offsets[r]:offsets[r+1]`` of the ``[L]`` arrays ``target_ids``/``target_weights``. ``width`` (the most labels
    of a row) sizes the Triton kernel's registers; unused here.
    """
    z = logits.to(compute_dtype(logits.dtype))
    z_t = z * inv_temperature if inv_temperature != 1.0 else z
    lse_t = torch.logsumexp(z_t, dim=-1)
    if offsets is None:
        weights = target_weights.to(z.dtype)
        ids = target_ids.long()
        total_weight = weights.sum(-1)
        kd_rows = kd_row_losses(weights, z_t.gather(1, ids), lse_t)
        label_rows = None
    else:
        lo, hi = offsets[[0, -1]].tolist()  # one host sync per chunk: this twin is the slow path
        label_rows = torch.repeat_interleave(torch.arange(logits.shape[0], device=logits.device),
                                             offsets[1:] - offsets[:-1], output_size=hi - lo)
        weights = target_weights[lo:hi].to(z.dtype)
        ids = target_ids[lo:hi].long()
        total_weight = torch.empty_like(lse_t)
        kd_rows = kd_label_losses(weights, z_t[label_rows, ids], lse_t, label_rows, totals=total_weight)
    ce_rows = lse_1 = valid = safe_labels = None
    if labels is not None:
        valid = labels != ignore_index
        safe_labels = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(1)
        lse_1 = lse_t if inv_temperature == 1.0 else torch.logsumexp(z, dim=-1)
        ce_rows = torch.where(valid, lse_1 - z.gather(1, safe_labels).squeeze(1), torch.zeros_like(lse_1))
    if compute_grad:
        kd_scale = (kd_coef * inv_temperature).to(z.dtype)
        grad = torch.exp(z_t - lse_t.unsqueeze(1)).mul_((kd_scale * total_weight).unsqueeze(1))
        if label_rows is None:
            grad.scatter_add_(1, ids, -kd_scale.unsqueeze(1) * weights)
        else:
            grad.index_put_((label_rows, ids), -kd_scale[label_rows] * weights, accumulate=True)
        if labels is not None:
            assert ce_coef is not None and lse_1 is not None and valid is not None and safe_labels is not None
            ce_scale = ce_coef.to(z.dtype)
            grad.add_(torch.exp(z - lse_1.unsqueeze(1)).mul_(ce_scale.unsqueeze(1)))
            grad.scatter_add_(1, safe_labels, -(ce_scale * valid.to(z.dtype)).unsqueeze(1))
        logits.copy_(grad)
    return kd_rows, ce_rows


def accumulate_weight_grad(grad_weight: torch.Tensor, grad_logits: torch.Tensor, hidden_chunk: torch.Tensor) -> None:
    """``grad_weight += grad_logits.T @ hidden_chunk`` with a float32 accumulator for half-precision inputs."""
    if grad_weight.dtype == grad_logits.dtype:
        grad_weight.addmm_(grad_logits.t(), hidden_chunk)
    elif grad_weight.is_cuda and fp32_accumulating_addmm_works(grad_weight.device):
        torch.addmm(grad_weight, grad_logits.t(), hidden_chunk, out_dtype=grad_weight.dtype, out=grad_weight)
    elif grad_weight.is_cuda:
        grad_weight.add_(grad_logits.t() @ hidden_chunk)
    else:
        grad_weight.addmm_(grad_logits.t().to(grad_weight.dtype), hidden_chunk.to(grad_weight.dtype))


_FP32_ADDMM: dict[str, bool] = {}


def fp32_accumulating_addmm_works(device: torch.device) -> bool:
    """Whether ``torch.addmm(acc_fp32, a_bf16, b_bf16, out_dtype=float32, out=acc)`` runs and is right here.

    cuBLAS can add a bf16 product into a float32 matrix in one call (no bf16 temporary, no rounding per chunk);
    older torch builds lack the ``out_dtype`` overload, so it is probed once per device, checked against float32.
    """
    key = str(device)
    if key not in _FP32_ADDMM:
        try:
            generator = torch.Generator(device="cpu").manual_seed(0)
            a = torch.randn(64, 48, generator=generator).to(device=device, dtype=torch.bfloat16)
            b = torch.randn(48, 32, generator=generator).to(device=device, dtype=torch.bfloat16)
            acc = torch.ones(64, 32, device=device)
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            expected = 1.0 + a.float() @ b.float()
            _FP32_ADDMM[key] = bool(torch.allclose(acc, expected, rtol=1e-3, atol=1e-3))
        except (RuntimeError, TypeError, NotImplementedError):
            _FP32_ADDMM[key] = False
    return _FP32_ADDMM[key]


def weight_grad_accumulation(device: torch.device, dtype: torch.dtype) -> str:
    """How :func:`accumulate_weight_grad` accumulates for this device and weight dtype (for benchmark records)."""
    if compute_dtype(dtype) == dtype:
        return f"addmm_ in {dtype}"
    if device.type == "cuda":
        return "addmm out_dtype=float32" if fp32_accumulating_addmm_works(device) else "bf16 matmul + float32 add"
    return "float32 addmm_ on upcast chunk"


def _chunk_function(backend: str):
    if backend == "triton":
        from sparselabels.loss.triton_kernels import chunk_loss_and_grad_triton

        return chunk_loss_and_grad_triton
    return chunk_loss_and_grad_torch


def _resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The kernel computes in float32: float64 inputs (references, tests) take the PyTorch path."""
    if backend == "auto":
        return "triton" if device.type == "cuda" and dtype != torch.float64 and triton_available() else "torch"
    if backend == "triton" and dtype == torch.float64:
        raise InputError("backend='triton' computes in float32; use backend='torch' (or 'auto') for float64")
    if backend == "triton" and not triton_available():
        raise InputError("backend='triton' was asked for but triton cannot be imported")
    return backend


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _chunk_rows(chunk_size: int | None, num_rows: int, vocab_size: int, hidden: torch.Tensor) -> int:
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise InputError(f"chunk_size must be a positive int, got {chunk_size!r}")
        return chunk_size
    if hidden.device.type == "cuda":
        budget, element = CHUNK_BYTES_CUDA, hidden.element_size()
    else:
        budget, element = CHUNK_BYTES_CPU, torch.finfo(compute_dtype(hidden.dtype)).bits // 8
    rows = max(1, budget // (vocab_size * element))
    rows = 1 << (rows.bit_length() - 1)  # a power of two: friendlier matmul shapes
    return max(1, min(rows, max(num_rows, 1)))


def _check_hidden_and_weight(hidden: torch.Tensor, weight: torch.Tensor) -> None:
    for name, tensor in (("hidden", hidden), ("lm_head_weight", weight)):
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise InputError(f"{name} must be floating point, got {tensor.dtype}")
    if hidden.dim() < 1:
        raise InputError(f"hidden must have shape [..., H], got {list(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1] or weight.shape[0] < 1:
        raise InputError(
            f"lm_head_weight must have shape [V, H] = [V, {hidden.shape[-1]}] with V >= 1, got {list(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise InputError(f"lm_head_weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if weight.device != hidden.device:
        raise InputError(f"lm_head_weight is on {weight.device} but hidden is on {hidden.device}")


def _check_ce_weight(ce_weight: float, labels: torch.Tensor | None) -> float:
    try:
        alpha = float(ce_weight)
    except (TypeError, ValueError):
        raise InputError(f"ce_weight must be a number in [0, 1], got {ce_weight!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"ce_weight must be in [0, 1], got {ce_weight!r}")
    if alpha > 0 and labels is None:
        raise InputError(f"ce_weight={ce_weight} needs labels (the ground-truth next tokens)")
    return alpha


def _row_coefficients(selected: torch.Tensor, scale: float, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    """Per-row factor of a term: its share ``scale``, the mask, and 1 / (selected rows) for the mean."""
    coef = selected.to(dtype) * scale
    if reduction == "mean":
        coef = coef / selected.sum().clamp(min=1).to(dtype)
    return coef
