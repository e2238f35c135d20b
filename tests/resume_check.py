"""The exact-resume check every trainer's tests share: n updates straight against k updates, a
checkpoint round trip (torch.save / torch.load(weights_only=True), as run.py does), a rebuild and
the remaining n − k updates. Weights and every returned statistic must be bitwise equal."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` through torch.save and a weights_only load, as a checkpoint file goes."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def assert_resumes_exactly(make_energy: Callable[[int], nn.Module],
                           make_trainer: Callable[[nn.Module], Any],
                           batches: list[torch.Tensor], split: int, seed: int = 3
                           ) -> tuple[Any, nn.Module]:
    """Run ``batches`` straight, and ``batches[:split]`` + save + rebuild + the rest; assert
    an equal energy state (weights and buffers) and equal step outputs after the split.
    ``make_energy(seed)`` builds the energy (the rebuilt one from another seed, so only the
    checkpoint can make them equal). Returns the trainer and energy that ran straight."""
    e1, g1 = make_energy(0), torch.Generator().manual_seed(seed)
    t1 = make_trainer(e1)
    outs1 = [t1.step(b, g1) for b in batches]
    e2, g2 = make_energy(0), torch.Generator().manual_seed(seed)
    t2 = make_trainer(e2)
    for b in batches[:split]:
        t2.step(b, g2)
    saved = roundtrip({"trainer": t2.state_dict(), "energy": e2.state_dict(),
                       "generator": g2.get_state()})
    e3 = make_energy(1)
    e3.load_state_dict(saved["energy"])
    t3 = make_trainer(e3)
    t3.load_state_dict(saved["trainer"])
    g3 = torch.Generator()
    g3.set_state(saved["generator"])
    outs3 = [t3.step(b, g3) for b in batches[split:]]
    s1, s3 = e1.state_dict(), e3.state_dict()
    assert s1.keys() == s3.keys()
    for k in s1:
        assert torch.equal(s1[k], s3[k]), k
    for o1, o3 in zip(outs1[split:], outs3, strict=True):
        assert o1.keys() == o3.keys()
        for k in o1:
            assert torch.equal(o1[k], o3[k]), k
    return t1, e1
