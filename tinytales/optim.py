"""Muon (Keller Jordan, 2024) for weight matrices, and several optimizers stepped as one.

torch.optim.Muon orthogonalizes in bfloat16 always; on a CPU without native bf16 (AVX2 only) that
is emulated and takes seconds per step (7 s for the bundled model's 24 matrices, against 2 s for the
whole forward and backward pass). This one orthogonalizes in bfloat16 where the hardware has it
(CUDA, CPUs with AVX-512 BF16 / AMX) and in float32 elsewhere.
"""
from __future__ import annotations

import torch

# quintic Newton-Schulz coefficients chosen to maximize the slope at zero (Keller Jordan's Muon)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately U V^T for matrix = U S V^T (singular values pushed into about [0.7, 1.2]), by `steps`
    quintic Newton-Schulz iterations in `dtype`; returned in matrix's dtype."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # iterate on the smaller Gram matrix
    x = x / (x.norm() + 1e-7)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(matrix.dtype)


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose update of each 2-D weight is orthogonalized (Newton-Schulz).

    Each update is scaled by sqrt(max(1, rows / cols)) so that tall and wide matrices move alike;
    decoupled weight decay shrinks the weight by lr * weight_decay per step. For the hidden layers'
    matrices only: embeddings, the output layer, norms and biases belong to AdamW.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0,
                 nesterov: bool = True, ns_steps: int = 5):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or ns_steps < 1:
            raise ValueError(f"invalid Muon settings: lr {lr}, momentum {momentum}, weight_decay {weight_decay}, "
                             f"ns_steps {ns_steps}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                      ns_steps=ns_steps))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon optimizes 2-D weight matrices only, got a parameter of shape "
                                     f"{tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                dtype = torch.bfloat16 if native_bf16(p.device) else torch.float32
                update = orthogonalize(update, group["ns_steps"], dtype)
                if decay:
                    p.mul_(1 - lr * decay)
                p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)
        return loss


class Optimizers:
    """Several optimizers stepped as one (Muon for matrices + AdamW for the rest): the interface the training
    loop, GradScaler and checkpoints use (param_groups, step, zero_grad, state_dict, load_state_dict)."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def step(self, closure=None):
        for optimizer in self.optimizers.values():
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True):
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.optimizers) - set(state))
        if missing:
            raise ValueError(f"the checkpoint's optimizer state has no {missing} part; resume with the optimizer "
                             f"the run was started with")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])
