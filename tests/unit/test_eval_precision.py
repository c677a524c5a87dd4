"""Evaluation runs in fp32 whatever the training precision, so bf16 rounding never decides 'matching'."""

from __future__ import annotations

import copy

import torch

from distst.config import model_section
from distst.evaluate import evaluate, fp32_view
from distst.models import build, frozen_copy


def test_a_bf16_model_is_evaluated_through_an_fp32_copy() -> None:
    model = build(model_section(name="adain", width=0.125)).eval()
    loss_net = frozen_copy(model.encoder)
    content, style = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    low = copy.deepcopy(model).to(torch.bfloat16)
    with fp32_view(low) as view:
        assert view is not low and all(p.dtype == torch.float32 for p in view.parameters())
        assert all(p.dtype == torch.bfloat16 for p in low.parameters())  # the trained model is untouched
        got = evaluate(view, loss_net, content, style)
    expected = evaluate(copy.deepcopy(low).float(), loss_net, content, style)  # the same weights, in fp32
    assert got == expected
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what bf16 evaluation would have given instead
        rounded = evaluate(low, loss_net.to(torch.bfloat16), content.bfloat16(), style.bfloat16())
    assert rounded["total_error"] != got["total_error"]


def test_an_fp32_model_is_evaluated_as_it_is() -> None:
    model = build(model_section(name="adain", width=0.125))
    with fp32_view(model) as view:
        assert view is model


def test_rewind_states_are_kept_in_fp32() -> None:
    from distst.masters import fp32_state_dict

    model = build(model_section(name="adain", width=0.125))
    exact = fp32_state_dict(model)
    assert all(torch.equal(exact[k], v) for k, v in model.state_dict().items())  # fp32: bitwise the weights
    low = copy.deepcopy(model).to(torch.bfloat16)
    assert all(v.dtype == torch.float32 for v in fp32_state_dict(low).values())
