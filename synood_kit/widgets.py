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


def refinement_widget(sources, steps, index: int = 0):
    """Return a slider over generations showing source, in-painted image and gradient magnitude of one image.

    Args:
        sources: ``(B, 3, H, W)`` source images.
        steps: the :class:`~synood_kit.inpainting.RefineStep` list.
        index: which image of the batch.
    """
    import ipywidgets as w

    slider = w.IntSlider(value=0, min=0, max=len(steps) - 1, description="generation")
    source = w.Image(value=_png(sources[index].permute(1, 2, 0).numpy()), format="png")
    image = w.Image(format="png")
    grad = w.Image(format="png")
    label = w.HTML()

    def show(change=None):
        st = steps[slider.value]
        image.value = _png(st.image[index].permute(1, 2, 0).numpy())
        g = st.grad_magnitude[index].numpy() if st.grad_magnitude is not None else np.zeros(sources.shape[-2:])
        grad.value = _png(g)
        label.value = (f"<b>generation {st.round}</b>: score {float(st.score[index]):.3f}, "
                       f"loss {float(st.loss[index]):.3f}, {st.seconds:.2f} s")

    slider.observe(show, names="value")
    show()
    titles = [w.HTML("source"), w.HTML("in-painted"), w.HTML("|gradient|")]
    grid = w.HBox([w.VBox([t, im]) for t, im in zip(titles, (source, image, grad), strict=True)])
    return w.VBox([slider, label, grid])
