"""The in-painting widget in a real browser: JupyterLab on loopback, notebook 03 run in Debian's headless Chromium.

Needs ``/usr/bin/chromium`` (Debian's ``chromium`` package; ``make test`` installs it) and Playwright for
Python (pinned in requirements.txt; it drives that binary, it never downloads a browser of its own). The
screenshot lands in ``outputs/test-artifacts/browser_widget.png``.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from synood_kit.config import repo_root

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [  # a closed network: no background connections, no update or sync checks
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NOTEBOOK = "03_inpainting_loop.ipynb"
# small: one image, one guided round (slider 0..1), 3 denoising steps (5 x strength 0.6); ~20 s warm, ~70 s cold
PARAMETERS = {
    "n_images": 1,
    "n_score": 50,
    "overrides": {"synthesis.guidance.rounds": 1, "synthesis.inpaint.num_inference_steps": 5},
}
ARTIFACTS = repo_root() / "outputs" / "test-artifacts"
RUN_TIMEOUT_MS = 300_000  # generous: kernel start, model loads and the notebook itself on a busy machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A headless JupyterLab on loopback in its own temporary root, config, data and runtime dirs.

    Yields ``(base_url, token, root_dir)``; the server is always shut down.
    """
    import papermill

    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    root.mkdir()
    papermill.execute_notebook(
        str(repo_root() / "notebooks" / NOTEBOOK),
        str(root / NOTEBOOK),
        parameters={**PARAMETERS, "out_dir": str(root / "out")},
        prepare_only=True,
        kernel_name="python3",
        progress_bar=False,
    )
    env = dict(os.environ)
    for var, sub in (
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTERLAB_SETTINGS_DIR", "settings"),
        ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
        ("IPYTHONDIR", "ipython"),
    ):
        env[var] = str(base / sub)
    port, token = _free_port(), secrets.token_hex(16)
    log = (base / "jupyterlab.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.terminals_enabled=False",
            "--allow-root",  # CI runs as root
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{(base / 'jupyterlab.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer in 60 s:\n{(base / 'jupyterlab.log').read_text()}")
            time.sleep(0.5)
        yield url, token, root
    finally:
        proc.terminate()  # SIGTERM: the server shuts its kernels down
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium; a missing browser fails the test (it is part of the suite, not optional)."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} not found: the browser test needs Debian's chromium package "
            "(`make test` installs it; or `apt-get install --no-install-recommends chromium` as root)"
        )
    return CHROMIUM


@pytest.mark.slow
@pytest.mark.browser
def test_inpainting_widget_runs_and_responds_in_chromium(chromium, lab):
    from playwright.sync_api import sync_playwright

    url, token, _ = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for stale in ("browser_widget.png", "browser_failure.png", "browser_failure.html"):
        (ARTIFACTS / stale).unlink(missing_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_function(
                """() => {
                    const panel = window.jupyterapp?.shell.currentWidget;
                    return panel?.sessionContext?.session?.kernel?.status === 'idle' && panel.content?.model;
                }""",
                timeout=120_000,
            )
            page.evaluate(
                """() => {
                    window.__runAll = undefined;
                    window.jupyterapp.commands.execute('notebook:run-all-cells').then(
                        ok => { window.__runAll = String(ok); }, e => { window.__runAll = 'error: ' + e; });
                }"""
            )
            page.wait_for_function(
                """() => window.__runAll !== undefined
                     && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'""",
                timeout=RUN_TIMEOUT_MS,
            )
            nb = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.toJSON()")
            code = [c for c in nb["cells"] if c["cell_type"] == "code"]
            errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
            assert not errors, "error output in the notebook:\n" + "\n".join(
                f"{o['ename']}: {o['evalue']}" for o in errors
            )
            assert page.evaluate("() => window.__runAll") == "true"
            assert all(c["execution_count"] for c in code), "not every code cell ran"

            widget = page.locator(".jp-OutputArea-output .widget-vbox", has=page.locator(".widget-slider")).first
            widget.wait_for(state="visible", timeout=60_000)
            widget.scroll_into_view_if_needed()
            slider, label = (
                widget.locator(".widget-slider").first,
                widget.locator(".widget-html-content").first,
            )
            images = widget.locator("img.widget-image")
            assert images.count() == 5, f"expected 5 panels, found {images.count()} images"
            page.wait_for_function(
                "els => els.every(im => im.complete && im.naturalWidth > 0)", arg=images.element_handles()
            )
            inpainted = images.nth(2)
            before = (label.inner_text(), inpainted.get_attribute("src"), images.nth(4).get_attribute("src"))
            assert "generation 0" in before[0]

            handle = slider.locator(".noUi-handle")
            handle.focus()
            handle.press("ArrowRight")
            # the kernel sends image, label, then the re-drawn trajectory: wait for the last one
            page.wait_for_function(
                "([label, plot, src]) => label.innerText.includes('generation 1') && plot.src !== src",
                arg=[label.element_handle(), images.nth(4).element_handle(), before[2]],
                timeout=30_000,
            )
            after = (label.inner_text(), inpainted.get_attribute("src"), images.nth(4).get_attribute("src"))
            assert after[1] != before[1], "the in-painted image did not change with the slider"
            widget.screenshot(path=str(ARTIFACTS / "browser_widget.png"))
        except Exception:  # keep what the browser showed, then fail as before
            page.screenshot(path=str(ARTIFACTS / "browser_failure.png"))
            (ARTIFACTS / "browser_failure.html").write_text(page.content())
            raise
        finally:
            browser.close()
