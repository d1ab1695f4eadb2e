"""Transformer.compile_layers: the compiled blocks compute what the eager ones do (forward and gradients,
packed rows included) and leave parameter names and the state dict unchanged."""

import copy

import torch

from panglot.backbone import build_transformer


def test_compiled_blocks_match_eager_and_keep_the_state_dict():
    torch.manual_seed(0)
    eager = build_transformer("debug", 97)
    compiled = copy.deepcopy(eager)
    compiled.compile_layers(dynamic=False)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    tokens = torch.randint(0, 97, (2, 24))
    document_ids = torch.tensor([[0] * 10 + [1] * 14, [0] * 24])
    outs = []
    for model in (eager, compiled):
        logits = model(tokens, document_ids=document_ids)
        logits.float().square().mean().backward()
        outs.append((logits.detach(), model.layers[0].attention.wq.weight.grad.clone()))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-6, rtol=1e-4)
    assert outs[0][1].abs().sum() > 0  # gradients reached the first block
