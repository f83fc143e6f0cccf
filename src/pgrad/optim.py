"""Natural-gradient machinery as pure functions: flat parameters, Fisher-vector products and
conjugate gradient (Schulman et al., 2015, "Trust Region Policy Optimization", appendix C).

TRPO and the natural policy gradient solve F s = g for the search direction s, where g is the
gradient of the surrogate objective and F the Fisher information matrix of the policy. F is never
formed: conjugate gradient only needs products F v, and those come from a double backward pass
through the mean KL divergence between the policy and a detached copy of itself,
F v = d/dtheta [ (d KL / d theta) . v ] at theta = theta_old, because the Hessian of
KL(pi_old || pi_theta) at theta_old is the Fisher matrix E_s E_{a ~ pi}[grad log pi  grad log pi^T].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pgrad.distributions import Categorical, DiagGaussian

VectorProduct = Callable[[torch.Tensor], torch.Tensor]


def flat_parameters(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """All parameters as one detached vector (a copy), in ``parameters`` order."""
    return torch.cat([p.detach().reshape(-1) for p in parameters]).clone()


def set_flat_parameters(parameters: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Write the vector ``flat`` back into ``parameters`` in place (the inverse of ``flat_parameters``)."""
    total = sum(p.numel() for p in parameters)
    if flat.numel() != total:
        raise ValueError(f"flat vector has {flat.numel()} entries, the parameters {total}")
    offset = 0
    with torch.no_grad():
        for parameter in parameters:
            size = parameter.numel()
            parameter.copy_(flat[offset : offset + size].view_as(parameter))
            offset += size


def flat_grad(
    output: torch.Tensor,
    parameters: Sequence[torch.Tensor],
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> torch.Tensor:
    """d output / d parameters as one vector; parameters that ``output`` does not use get zeros."""
    grads = torch.autograd.grad(
        output, list(parameters), create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
    )
    flat = [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, parameters, strict=True)]
    return torch.cat(flat)


def detach_distribution(dist: Categorical | DiagGaussian) -> Categorical | DiagGaussian:
    """A copy of ``dist`` cut from the graph: pi_old, fixed while pi_theta moves."""
    if isinstance(dist, Categorical):
        return Categorical(dist.log_probs.detach())  # log_softmax(log p) = log p
    return DiagGaussian(dist.mean.detach(), dist.log_std.detach())


def fisher_vector_product(mean_kl: torch.Tensor, parameters: Sequence[torch.Tensor], damping: float) -> VectorProduct:
    """Return v -> F v + damping * v, with F the Hessian of ``mean_kl`` with respect to ``parameters``.

    ``mean_kl`` must be E_s[KL(pi_old(.|s) || pi_theta(.|s))] with pi_old a detached copy of pi_theta
    (``detach_distribution``), evaluated at theta = theta_old; there its Hessian is the Fisher matrix.
    The first derivative is built once with ``create_graph``; each product is one more backward
    pass: F v = grad_theta (grad_theta KL . v). Damping (F + damping I) keeps CG well-posed where F
    is singular or poorly estimated from one batch.
    """
    kl_grad = flat_grad(mean_kl, parameters, create_graph=True)

    def product(vector: torch.Tensor) -> torch.Tensor:
        return flat_grad(kl_grad @ vector, parameters, retain_graph=True) + damping * vector

    return product


def conjugate_gradient(
    matrix_vector: VectorProduct, b: torch.Tensor, iterations: int, residual_tol: float = 1e-10
) -> tuple[torch.Tensor, float]:
    """Approximately solve A x = b for symmetric positive definite A, given only v -> A v.

    Standard CG from x0 = 0 (Nocedal & Wright, algorithm 5.2): r = b - A x, p the A-conjugate
    search direction, alpha = r.r / p.A p, beta = r_new.r_new / r.r. Stops after ``iterations``
    products or once ||r|| <= residual_tol. Returns x and the final residual norm ||b - A x||
    (as CG tracks it), which is the ``diagnostics/cg_residual`` metric.
    """
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    residual_sq = residual @ residual
    for _ in range(iterations):
        if float(residual_sq) <= residual_tol**2:
            break
        product = matrix_vector(direction)
        alpha = residual_sq / (direction @ product)
        x += alpha * direction
        residual -= alpha * product
        new_residual_sq = residual @ residual
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return x, float(residual_sq.sqrt())
