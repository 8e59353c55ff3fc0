"""The refinement widget: five panels, and moving the slider changes the in-painted image and the trajectory."""

from __future__ import annotations

import torch

from synood_kit.inpainting import RefineStep
from synood_kit.widgets import refinement_widget


def _steps(n=3):
    g = torch.Generator().manual_seed(0)
    return [
        RefineStep(
            r,
            torch.zeros(2, 4, 32, 32),
            torch.zeros(2, 4, 32, 32),
            torch.rand(2, 3, 32, 32, generator=g),
            torch.rand(2, generator=g),
            torch.rand(2, generator=g),
            None,
            torch.rand(2, 32, 32, generator=g) if r < n - 1 else None,
            0.1,
            24,
            1,
        )
        for r in range(n)
    ]


def test_slider_updates_the_panels():
    widget = refinement_widget(
        torch.rand(2, 3, 32, 32),
        _steps(),
        index=1,
        masks=torch.ones(2, 1, 32, 32),
        id_scores=[0.8, 0.9, 0.7],
        ood_scores=[0.1, 0.2],
        target=0.5,
    )
    slider, label, grid = widget.children
    assert [box.children[0].value for box in grid.children] == [
        "source",
        "mask",
        "in-painted",
        "|gradient|",
        "score trajectory",
    ]
    image, plot = grid.children[2].children[1], grid.children[4].children[1]
    before = (image.value, plot.value, label.value)
    slider.value = 2
    assert image.value != before[0] and plot.value != before[1] and "generation 2" in label.value
    assert slider.max == 2
