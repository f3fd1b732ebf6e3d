"""Memory per GPU of a sharded (FSDP2) transformer run: pure arithmetic, no torch.

What one GPU holds, in bytes, for a decoder-only transformer trained by
:mod:`tessera.training.trainer` with ``train.parallelism=fsdp`` (see ``wrap_fsdp``):

* **sharded state**, divided over the ``gpus`` ranks, per parameter: fp32 master weights (4),
  fp32 gradients (4: the ``MixedPrecisionPolicy`` reduces in fp32), AdamW's two fp32 moments
  (8), and the fp32 EMA shadow when EMA is on (4) -- 20 bytes, or 16 without EMA. (The
  paper stored most of this in 16 bits; we keep fp32 masters and moments.)
* **gathered parameters**: the root unit (embeddings, tied output tables, final norm: kept
  gathered from forward to backward) and two blocks at a time (the running one and the one
  prefetched), in the compute precision (2 bytes for bf16/fp16, 4 for fp32);
* **unsharded gradients** before their reduce-scatter: the root's and one block's, fp32;
* **activations**, per example of the micro-batch, in the compute precision. A pre-norm
  block saves 16 d values per position for backward: its input and the attention norm's
  output (2d), q, k, v (3d), the attention output (d), the MLP norm's input and output
  (= the fc input; 2d), GELU's input and output (4d + 4d), i.e. Korthikanti et al.'s 34 sbh
  bytes less the dropout masks, with memory-efficient attention (no T x T scores kept).
  With activation checkpointing only each block's input (d per position) is kept, plus one
  block's 16 d while it is recomputed. The output head adds its logits: the 16-bit logits,
  their fp32 copy and the fp32 log-softmax that cross-entropy keeps (8 bytes each in fp32).

Not counted: the CUDA context and allocator fragmentation (keep 1-2 GiB free), the frozen
dVAE that tokenizes the images (its own ~0.1 GiB), communication buffers beyond the above.
Units are GiB (2**30 bytes): a "16 GB" V100 and an "80 GB" A100/H100 are 16 and 80 GiB.
"""

from __future__ import annotations

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerShape:
    """What the plan needs of a model: parameter counts and activation sizes.

    params: all parameters; root_params: those outside the sharded blocks; block_params: the
    largest block's; n_layers / d_model: blocks and width; positions: input positions per
    example; logits: output-layer logits per example (sum over the heads).
    """

    params: int
    root_params: int
    block_params: int
    n_layers: int
    d_model: int
    positions: int
    logits: int


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU of each term (see the module docstring) and whether they fit."""

    gpus: int
    gpu_mem_gib: float
    micro_batch: int
    activation_checkpointing: bool
    sharded_state: float
    gathered_params: float
    unsharded_grads: float
    activations: float

    @property
    def total(self) -> float:
        return self.sharded_state + self.gathered_params + self.unsharded_grads + self.activations

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_mem_gib * GIB

    def lines(self) -> list[str]:
        ac = "with" if self.activation_checkpointing else "without"
        rows = [
            (f"sharded state (fp32 master, grads, Adam, EMA) / {self.gpus}", self.sharded_state),
            ("gathered parameters (root + 2 blocks)", self.gathered_params),
            ("unsharded gradients (root + 1 block, fp32)", self.unsharded_grads),
            (f"activations x{self.micro_batch}, {ac} checkpointing", self.activations),
        ]
        out = [f"  {name:<52} {value / GIB:8.2f} GiB" for name, value in rows]
        verdict = "fits" if self.fits else "does NOT fit"
        out.append(
            f"  {'total':<52} {self.total / GIB:8.2f} GiB of {self.gpu_mem_gib:g}: {verdict}"
        )
        return out


def state_bytes_per_param(*, ema: bool) -> int:
    """fp32 master (4) + fp32 gradient (4) + AdamW m and v (8) [+ fp32 EMA (4)]."""
    return 16 + (4 if ema else 0)


def activation_bytes(
    shape: TransformerShape, *, compute_bytes: int, activation_checkpointing: bool
) -> float:
    """Saved activations of one example (see the module docstring)."""
    t, d, n = shape.positions, shape.d_model, shape.n_layers
    per_block = 16 * d * t * compute_bytes
    blocks = n * t * d * compute_bytes + per_block if activation_checkpointing else n * per_block
    head = shape.logits * (compute_bytes + 8 if compute_bytes < 4 else 8)
    return float(blocks + head)


def fsdp_memory(
    shape: TransformerShape,
    *,
    gpus: int,
    gpu_mem_gib: float,
    precision: str = "bf16",
    micro_batch: int = 1,
    activation_checkpointing: bool = True,
    ema: bool = True,
) -> MemoryPlan:
    """Bytes per GPU for ``shape`` fully sharded over ``gpus`` GPUs of ``gpu_mem_gib`` GiB.

    precision: fp32 | bf16 | fp16 (the compute / all-gather precision; state stays fp32).
    """
    if gpus < 1 or micro_batch < 1 or gpu_mem_gib <= 0:
        raise ValueError("need gpus >= 1, micro_batch >= 1 and gpu_mem_gib > 0")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision is fp32, bf16 or fp16, got {precision!r}")
    w = 4 if precision == "fp32" else 2
    return MemoryPlan(
        gpus=gpus,
        gpu_mem_gib=gpu_mem_gib,
        micro_batch=micro_batch,
        activation_checkpointing=activation_checkpointing,
        sharded_state=shape.params * state_bytes_per_param(ema=ema) / gpus,
        gathered_params=float(w * (shape.root_params + 2 * shape.block_params)),
        unsharded_grads=float(4 * (shape.root_params + shape.block_params)),
        activations=micro_batch
        * activation_bytes(
            shape, compute_bytes=w, activation_checkpointing=activation_checkpointing
        ),
    )
