"""The Perfusion operator of method.md §3–4, in plain torch (no diffusers).

Shapes: e (..., d) rows of a text encoding; I = target_inputs (N, d), one i*_n per row;
inv_cov C⁻¹ (d, d); weight W (d_out, d); output_targets O (N, d_out), one o*_n per row.
Similarities and projection coefficients are computed in float32 whatever the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


def similarity(e: Tensor, target_inputs: Tensor, inv_cov: Tensor) -> Tensor:
    """s_n(e) = (eᵀ C⁻¹ i*_n) / (i*_nᵀ C⁻¹ i*_n) for every concept n; returns (..., N) fp32."""
    return Basis.build(target_inputs, inv_cov).similarity(e)


def projection(e: Tensor, target_inputs: Tensor, inv_cov: Tensor) -> Tensor:
    """P(e) = I (Iᵀ C⁻¹ I)⁻¹ Iᵀ C⁻¹ e: C⁻¹-orthogonal projection onto span{i*_n}; (..., d) fp32."""
    basis = Basis.build(target_inputs, inv_cov)
    return basis.coefficients(e) @ basis.inputs


def gate(s: Tensor, beta: Tensor | float, tau: Tensor | float) -> Tensor:
    """g = σ((s − β) / τ), elementwise; β and τ broadcast over the concept axis."""
    return torch.sigmoid((s - beta) / tau)


def edited_projection(e: Tensor, weight: Tensor, target_inputs: Tensor, output_targets: Tensor,
                      beta: Tensor | float, tau: Tensor | float, inv_cov: Tensor) -> Tensor:
    """h(e) = W (e − P(e)) + Σ_n σ((s_n(e) − β_n) / τ_n) · o*_n   (method.md §4).

    Evaluated as W e − c(e) (W I)ᵀ + g(e) O with c(e) the projection coefficients, so the
    cost is one ordinary projection plus an N-wide correction. Returns the dtype of `e`.
    """
    basis = Basis.build(target_inputs, inv_cov)
    projected = e @ weight.to(e.dtype).T
    return basis.edit(e, projected, basis.mapped_inputs(weight), output_targets, beta, tau)[0]


@dataclass(frozen=True)
class Basis:
    """Per-concept-set precomputation shared by every layer (float32; built in float64).

    inputs        I (N, d)
    whitened      C⁻¹ I as rows (N, d)
    energy        i*_nᵀ C⁻¹ i*_n (N)
    gram_inverse  (Iᵀ C⁻¹ I)⁻¹ (N, N), the N × N system of the projection solved once; a
                  pseudo-inverse, so that linearly dependent i*_n still give the projection
                  onto their span
    """

    inputs: Tensor
    whitened: Tensor
    energy: Tensor
    gram_inverse: Tensor

    @classmethod
    def build(cls, target_inputs: Tensor, inv_cov: Tensor) -> Basis:
        inputs = target_inputs.detach().double().reshape(-1, target_inputs.shape[-1])
        whitened = inputs @ inv_cov.detach().double()  # C⁻¹ is symmetric: (C⁻¹ i)ᵀ = iᵀ C⁻¹
        gram = whitened @ inputs.T
        gram = (gram + gram.T) / 2
        gram_inverse = torch.linalg.pinv(gram, hermitian=True)
        return cls(inputs.float(), whitened.float(), torch.diagonal(gram).float(),
                   gram_inverse.float())

    def dots(self, e: Tensor) -> Tensor:
        """eᵀ C⁻¹ i*_n for every n: (..., N) fp32."""
        return e.float() @ self.whitened.T

    def similarity(self, e: Tensor, dots: Tensor | None = None) -> Tensor:
        """s_n(e), (..., N) fp32."""
        return (self.dots(e) if dots is None else dots) / self.energy

    def coefficients(self, e: Tensor, dots: Tensor | None = None) -> Tensor:
        """c(e) = (Iᵀ C⁻¹ I)⁻¹ Iᵀ C⁻¹ e so that P(e) = I c(e): (..., N) fp32."""
        return (self.dots(e) if dots is None else dots) @ self.gram_inverse

    def mapped_inputs(self, weight: Tensor) -> Tensor:
        """W I as rows (N, d_out) fp32: the layer's image of every i*_n."""
        return self.inputs @ weight.float().T

    def edit(self, e: Tensor, projected: Tensor, mapped_inputs: Tensor, output_targets: Tensor,
             beta: Tensor | float, tau: Tensor | float,
             scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """h(e) from the plain projection W e: W e + scale · (−c(e) (W I)ᵀ + g(e) O).

        Returns (h in the dtype of `projected`, gates (..., N) fp32).
        """
        dots = self.dots(e)
        device = dots.device
        gates = gate(self.similarity(e, dots), torch.as_tensor(beta, dtype=torch.float32,
                                                               device=device),
                     torch.as_tensor(tau, dtype=torch.float32, device=device))
        correction = gates @ output_targets.float() - self.coefficients(e, dots) @ mapped_inputs
        if scale != 1.0:
            correction = correction * scale
        return (projected.float() + correction).to(projected.dtype), gates
