"""Pieces of the explorer's page shared by its tabs: result files, error messages, progress and tile pickers.

``MODEL``/``CONTROL`` are the two gradio concurrency groups: every model action in one group of size 1, the
Cancel buttons, pickers and sliders in an unlimited one, so they never wait behind a job.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rockgen.explore.jobs import JobCancelled
from rockgen.explore.service import ExploreService
from rockgen.tasks.common import upscale_lanczos
from rockgen.visual import save_grid, to_uint8

try:
    import gradio as gr
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("task=explore needs gradio: pip install 'rockgen[explore]' (or pip install gradio)") from err

MODEL = {"concurrency_limit": 1, "concurrency_id": "model"}
CONTROL = {"concurrency_limit": None, "concurrency_id": "control"}


def action_buttons(label: str, elem_id: str, interactive: bool | None = None, stop_id: str | None = None) -> tuple:
    """A row with a tab's primary button and its Cancel button: (go, stop)."""
    with gr.Row():
        go = gr.Button(label, variant="primary", interactive=interactive, elem_id=elem_id)
        return go, gr.Button("Cancel", elem_id=stop_id)


def result_area(png_label: str) -> tuple:
    """The text line (timings, errors) and the PNG download under a tab's results."""
    return gr.Markdown(), gr.File(label=png_label)


def wire_action(service, buttons: tuple, fn, inputs: list, outputs: list, api_name: str, cancel_api: str | None = None):
    """Buttons (go, stop): go runs ``fn`` in the model group (API endpoint ``api_name``), stop cancels the running
    job and reports in the first Markdown of ``outputs`` (a private endpoint unless ``cancel_api`` names it)."""
    go, stop = buttons
    go.click(fn, inputs, outputs, api_name=api_name, **MODEL)
    info = next(o for o in outputs if isinstance(o, gr.Markdown))
    visibility = {"api_name": cancel_api} if cancel_api else {"api_visibility": "private"}
    stop.click(service.cancel, None, info, **visibility, **CONTROL)


class Outputs:
    """Numbered PNG files of the session's results under ``run_dir/<action>/``."""

    def __init__(self, run_dir: Path, display_size: int) -> None:
        self.run_dir = Path(run_dir)
        self.display_size = int(display_size)
        self._n = itertools.count(1)
        self._lock = threading.Lock()

    def view(self, images01: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) → upscaled to display_size (0 = native size)."""
        return upscale_lanczos(images01, self.display_size or None)

    def tiles(self, images01: torch.Tensor) -> list[np.ndarray]:
        return list(to_uint8(self.view(images01)))

    def save(self, action: str, images01: torch.Tensor, nrow: int = 8) -> str:
        """Write ``run_dir/<action>/<n>.png`` (a grid of upscaled tiles); returns its path for the download."""
        n = self.number()
        return str(save_grid(self.view(images01), self.run_dir / action / f"{n:04d}.png", nrow=nrow))

    def number(self) -> int:
        with self._lock:
            return next(self._n)

    def save_array(self, action: str, image: np.ndarray, suffix: str = "", n: int | None = None) -> str:
        """Write the uint8 (H, W, 3) ``image`` as ``run_dir/<action>/<n><suffix>.png``; returns its path."""
        n = self.number() if n is None else n
        path = self.run_dir / action / f"{n:04d}{suffix}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        return str(path)

    def enlarge(self, image: np.ndarray, tile: int, limit: int = 1024) -> np.ndarray:
        """uint8 (H, W, 3) enlarged by the tiles' display factor (nearest: pixels stay sharp), longer side <= limit."""
        factor = max(1, min(self.display_size // tile, limit // max(image.shape[:2])))
        return image.repeat(factor, 0).repeat(factor, 1) if factor > 1 else image


def as_ui_error(fn: Callable) -> Callable:
    """Turn the service's clear errors into messages on the page (and in the HTTP API's error)."""

    @functools.wraps(fn)  # keeps the signature: gradio injects gr.Progress by the ``progress`` parameter
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except JobCancelled as err:
            raise gr.Error(str(err), title="Cancelled") from None
        except (ValueError, RuntimeError) as err:
            raise gr.Error(str(err)) from None

    return wrapped


def progress_fn(progress: gr.Progress):
    return lambda frac, desc: progress(frac, desc=desc)


def picker(service: ExploreService, choices: list[str], image: gr.Image, label: str) -> None:
    """A dropdown of tiles on disk that loads the chosen one into ``image`` (as pixels: no path is exposed)."""
    if not choices:
        return
    pick = gr.Dropdown(choices=choices, value=None, label=label, interactive=True)

    def load(path: str | None):
        if not path:
            return None
        from rockgen.data.images import load_rgb

        return np.asarray(load_rgb(path))

    pick.change(load, inputs=pick, outputs=image, api_visibility="private", **CONTROL)
