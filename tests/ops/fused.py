"""What the fused-op tests share: a NaN-refusing comparison, forward + gradients in one call, and the
torch.compile and thread-count checks every op must pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=False, msg=lambda m: f"{what}: {m}")


def forward_and_grads(fn: Callable, leaves: Sequence[torch.Tensor], grad_out: torch.Tensor, *rest):
    """fn(*leaves, *rest) and its gradients w.r.t. fresh copies of `leaves`."""
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    out = fn(*leaves, *rest)
    return out.detach(), torch.autograd.grad(out, leaves, grad_out)


def assert_compiles_like_eager(op: Callable, leaves: Sequence[torch.Tensor], *rest) -> None:
    """The op traces as one node (fake + autograd registrations) inside torch.compile(fullgraph=True), and
    the compiled loss and gradients equal eager ones."""

    def block(*args):
        return (op(*args, *rest) * 2 + 1).square().sum()

    compiled = torch.compile(block, fullgraph=True)
    results = []
    for fn in (compiled, block):
        copies = [t.detach().clone().requires_grad_() for t in leaves]
        loss = fn(*copies)
        results.append((loss, torch.autograd.grad(loss, copies)))
    (loss, grads), (eager_loss, eager_grads) = results
    torch.testing.assert_close(loss, eager_loss)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want)


def assert_thread_count_does_not_matter(fn: Callable[[], Sequence[torch.Tensor]]) -> None:
    """fn() gives bitwise the same tensors with all threads and with one (deterministic reductions)."""
    first = fn()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        second = fn()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
