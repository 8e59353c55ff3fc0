"""Interactive views for JupyterLab (ipywidgets). Each returns a widget; nothing is displayed by itself."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["refinement_widget"]


def _png(array: np.ndarray, scale: int = 6) -> bytes:
    from PIL import Image

    arr = np.asarray(array)
    if arr.ndim == 2:  # a magnitude map: normalise to grey levels
        arr = (255 * (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-12)).astype(np.uint8)
    else:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(arr)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def refinement_widget(sources, steps, index: int = 0, masks=None, id_scores=None, ood_scores=None, target=None):
    """Return a slider over generations showing source, mask, in-painted image, gradient magnitude and the score
    trajectory (against the ID and OOD score distributions when given) of one image.

    Args:
        sources: ``(B, 3, H, W)`` source images.
        steps: the :class:`~synood_kit.inpainting.RefineStep` list.
        index: which image of the batch.
        masks: ``(B, 1, H, W)`` masks (default: full masks).
        id_scores, ood_scores, target: drawn behind the trajectory.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    slider = w.IntSlider(value=0, min=0, max=len(steps) - 1, description="generation")
    source = w.Image(value=_png(sources[index].permute(1, 2, 0).numpy()), format="png")
    mask_arr = masks[index, 0].numpy() if masks is not None else np.ones(sources.shape[-2:])
    mask = w.Image(value=_png(np.repeat(mask_arr[..., None], 3, axis=-1)), format="png")
    image = w.Image(format="png")
    grad = w.Image(format="png")
    label = w.HTML()
    plot = w.Image(format="png")
    traj = [float(st.score[index]) for st in steps]

    def show(change=None):
        st = steps[slider.value]
        image.value = _png(st.image[index].permute(1, 2, 0).numpy())
        g = st.grad_magnitude[index].numpy() if st.grad_magnitude is not None else np.zeros(sources.shape[-2:])
        grad.value = _png(g)
        label.value = (
            f"<b>generation {st.round}</b>: score {float(st.score[index]):.3f}, "
            f"loss {float(st.loss[index]):.3f}, {st.seconds:.2f} s"
        )
        fig, ax = plt.subplots(figsize=(3.2, 2.2))
        for scores, color in ((id_scores, "tab:blue"), (ood_scores, "tab:red")):
            if scores is not None:
                ax.hist(
                    np.asarray(scores),
                    bins=30,
                    orientation="horizontal",
                    color=color,
                    alpha=0.3,
                    weights=np.full(len(scores), len(steps) / max(len(scores), 1) / 4),
                )
        ax.plot(range(len(traj)), traj, "-o", color="k", markersize=3)
        ax.plot([slider.value], [traj[slider.value]], "o", color="tab:orange", markersize=8)
        if target is not None:
            ax.axhline(target, color="tab:green", linestyle="--")
        ax.set_xlabel("generation", fontsize=7)
        ax.set_ylabel("score", fontsize=7)
        ax.tick_params(labelsize=6)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        plot.value = buf.getvalue()

    slider.observe(show, names="value")
    show()
    titles = [w.HTML(t) for t in ("source", "mask", "in-painted", "|gradient|", "score trajectory")]
    panels = (source, mask, image, grad, plot)
    grid = w.HBox([w.VBox([t, im]) for t, im in zip(titles, panels, strict=True)])
    return w.VBox([slider, label, grid])
