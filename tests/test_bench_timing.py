"""bench/timing.py: the helpers every benchmark shares."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from bench.timing import set_memory_layout, shown_command


def test_set_memory_layout_moves_every_network_and_back() -> None:
    nets = {"G": torch.nn.Conv2d(3, 8, 3), "D": torch.nn.Sequential(torch.nn.Conv2d(8, 4, 1))}
    model = SimpleNamespace(nets=nets)
    set_memory_layout(model, channels_last=True)
    for net in nets.values():
        for p in net.parameters():
            if p.dim() == 4:
                assert p.is_contiguous(memory_format=torch.channels_last)
    assert not nets["G"].weight.is_contiguous()  # a 3x3 kernel's NHWC strides differ from NCHW
    set_memory_layout(model, channels_last=False)
    for net in nets.values():
        for p in net.parameters():
            assert p.is_contiguous()


def test_shown_command_leaves_out_the_scratch_output() -> None:
    shown = shown_command("bench.x", ["--rounds", "2", "--out", "/tmp/scratch.md"])
    assert "--rounds 2" in shown and "--out" not in shown and "scratch" not in shown
