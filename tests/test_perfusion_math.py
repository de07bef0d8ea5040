"""The Perfusion operator against closed forms (method.md §3–4)."""

from __future__ import annotations

import math

import pytest
import torch

from perfusion_hub.perfusion.math import (
    Basis,
    edited_projection,
    gate,
    projection,
    similarity,
)

D, D_OUT = 12, 7


def spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return (a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64))


def setup(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cov = spd(D, seed + 100)
    inv = torch.linalg.inv(cov)
    inputs = torch.randn(n, D, generator=g, dtype=torch.float64)
    inputs[1:] += 0.8 * inputs[0]  # far from C⁻¹-orthogonal
    weight = torch.randn(D_OUT, D, generator=g, dtype=torch.float64)
    outputs = torch.randn(n, D_OUT, generator=g, dtype=torch.float64)
    e = torch.randn(5, 3, D, generator=g, dtype=torch.float64)
    return inv, inputs, weight, outputs, e


def closed_form_projection(e, inputs, inv):
    big_i = inputs.T  # d × N
    p = big_i @ torch.linalg.inv(big_i.T @ inv @ big_i) @ big_i.T @ inv
    return e @ p.T


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_projection_is_the_closed_form(n):
    inv, inputs, _, _, e = setup(n)
    got = projection(e, inputs, inv)
    want = closed_form_projection(e, inputs, inv)
    assert torch.allclose(got.double(), want, atol=1e-4, rtol=1e-4)
    # it is a projection: P(P(e)) = P(e), and P(i*_n) = i*_n
    assert torch.allclose(projection(got, inputs, inv), got, atol=1e-4, rtol=1e-4)
    assert torch.allclose(projection(inputs, inputs, inv).double(), inputs, atol=1e-4, rtol=1e-4)


def test_projection_is_not_independent_subtraction():
    inv, inputs, _, _, e = setup(3)
    s = similarity(e, inputs, inv).double()
    naive = s @ inputs
    assert not torch.allclose(projection(e, inputs, inv).double(), naive, atol=1e-2)


@pytest.mark.parametrize("n", [1, 3])
def test_similarity_matches_definition(n):
    inv, inputs, _, _, e = setup(n)
    s = similarity(e, inputs, inv)
    assert s.dtype == torch.float32
    for k in range(n):
        want = (e @ inv @ inputs[k]) / (inputs[k] @ inv @ inputs[k])
        assert torch.allclose(s[..., k].double(), want, atol=1e-4, rtol=1e-4)
    assert torch.allclose(similarity(inputs, inputs, inv).diagonal(), torch.ones(n), atol=1e-5)


def test_gate_is_a_shifted_sigmoid():
    s = torch.tensor([0.0, 0.7, 1.0])
    assert torch.allclose(gate(s, 0.7, 0.15), torch.sigmoid((s - 0.7) / 0.15))
    assert gate(torch.tensor(0.7), 0.7, 0.15).item() == pytest.approx(0.5)


def test_open_gate_maps_target_input_to_target_output():
    inv, inputs, weight, outputs, _ = setup(1)
    h = edited_projection(inputs, weight, inputs, outputs, float("-inf"), 0.1, inv)
    assert torch.allclose(h.double(), outputs, atol=1e-4)


def test_several_open_gates_map_each_input_to_its_output_plus_the_others():
    inv, inputs, weight, outputs, _ = setup(3)
    h = edited_projection(inputs, weight, inputs, outputs, float("-inf"), 0.1, inv)
    assert torch.allclose(h.double(), outputs.sum(0).expand(3, -1), atol=1e-4)


def test_orthogonal_token_gets_stock_output_plus_leak():
    inv, inputs, weight, outputs, e = setup(1)
    e = e.reshape(-1, D)
    a = inv @ inputs[0]
    e = e - (e @ a)[:, None] / (a @ a) * a  # now eᵀ C⁻¹ i* = 0
    beta, tau = 0.7, 0.15
    h = edited_projection(e, weight, inputs, outputs, beta, tau, inv)
    leak = 1 / (1 + math.exp(beta / tau))
    assert torch.allclose(h, e @ weight.T + leak * outputs[0], atol=1e-6)


def test_edited_projection_matches_the_equation_for_four_concepts():
    inv, inputs, weight, outputs, e = setup(4)
    beta = torch.tensor([0.6, 0.7, 0.5, 0.75], dtype=torch.float64)
    tau = torch.tensor([0.1, 0.15, 0.2, 0.1], dtype=torch.float64)
    got = edited_projection(e, weight, inputs, outputs, beta, tau, inv)
    s = torch.stack([(e @ inv @ i) / (i @ inv @ i) for i in inputs], -1)
    want = (e - closed_form_projection(e, inputs, inv)) @ weight.T
    want = want + torch.sigmoid((s - beta) / tau) @ outputs
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_permuting_concepts_changes_nothing():
    inv, inputs, weight, outputs, e = setup(4)
    beta = torch.tensor([0.6, 0.7, 0.5, 0.75])
    order = torch.tensor([2, 0, 3, 1])
    a = edited_projection(e, weight, inputs, outputs, beta, 0.15, inv)
    b = edited_projection(e, weight, inputs[order], outputs[order], beta[order], 0.15, inv)
    assert torch.allclose(a, b, atol=1e-5)


def test_rank_one_update_when_gate_is_the_similarity():
    """With σ(·) replaced by s itself, h is ROME's W' = W + (o* − W i*)(C⁻¹ i*)ᵀ / (i*ᵀ C⁻¹ i*)."""
    inv, inputs, weight, outputs, e = setup(1)
    i, o = inputs[0], outputs[0]
    basis = Basis.build(inputs, inv)
    s = basis.similarity(e).double()
    h = e @ weight.T - (basis.coefficients(e).double() @ basis.mapped_inputs(weight).double()) \
        + s @ outputs
    rome = weight + torch.outer(o - weight @ i, inv @ i) / (i @ inv @ i)
    assert torch.allclose(h, e @ rome.T, atol=1e-4, rtol=1e-4)


def test_invariant_to_scaling_the_covariance():
    inv, inputs, weight, outputs, e = setup(3)
    a = edited_projection(e, weight, inputs, outputs, 0.7, 0.15, inv)
    b = edited_projection(e, weight, inputs, outputs, 0.7, 0.15, inv / 37.0)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_keep_similarities_in_fp32(dtype):
    inv, inputs, weight, outputs, e = setup(2)
    inv, inputs, weight, outputs, e = (t.float() for t in (inv, inputs, weight, outputs, e))
    s = similarity(e.to(dtype), inputs, inv)
    assert s.dtype == torch.float32
    full = edited_projection(e, weight, inputs, outputs, 0.7, 0.15, inv)
    low = edited_projection(e.to(dtype), weight.to(dtype), inputs, outputs, 0.7, 0.15, inv)
    assert low.dtype == dtype
    scale = full.abs().max()
    tolerance = {torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    assert (low.float() - full).abs().max() / scale < tolerance


def test_dependent_inputs_still_project_onto_their_span():
    inv, inputs, weight, outputs, e = setup(2)
    doubled = torch.cat([inputs, inputs[:1] * 2.0])
    assert torch.allclose(projection(e, doubled, inv).double(),
                          closed_form_projection(e, inputs, inv), atol=1e-4, rtol=1e-4)
