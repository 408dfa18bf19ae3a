"""``task=explore``: serve the explorer page for a DiffAE checkpoint on this machine until Ctrl-C / SIGTERM.

    python run.py task=explore ckpt_path=logs/train/lat/checkpoints/last.ckpt \\
        latents_path=logs/infer_latents/demo/latents.pt [port=7860] [host=127.0.0.1]

Checks every setting (checkpoint, latents file of this encoder, tiles folder, host) before the server starts,
prints the address, and writes the PNGs of the session into the run directory.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from rockgen.data.images import find_images
from rockgen.latents import encoder_fingerprint, load_latents
from rockgen.tasks.interpolate import load_autoencoder

log = logging.getLogger(__name__)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_host_port(host: str, port: int) -> int:
    """The port to serve on (a free one for 0); a clear error when ``port`` is taken; warns for public hosts."""
    if str(host) not in LOCAL_HOSTS:
        log.warning(
            "host=%s: the explorer is reachable from other machines on your network, without authentication; "
            "use the default host=127.0.0.1 unless you mean it",
            host,
        )
        print(f"WARNING: serving on {host}: reachable from your network, no authentication", flush=True)
    if not 0 <= int(port) < 65536:
        raise ValueError(f"port: 0 … 65535 (0 = any free port), got {port}")
    with socket.socket(socket.AF_INET6 if ":" in str(host) else socket.AF_INET) as s:
        try:
            s.bind((str(host), int(port)))
        except OSError as err:
            msg = f"port: cannot serve on {host}:{port} ({err.strerror}); choose another port=... or port=0"
            raise OSError(msg) from None
        return s.getsockname()[1]


def _tiles(cfg: DictConfig) -> list[Path]:
    if not cfg.tiles:
        return []
    folder = Path(cfg.tiles).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"tiles: folder not found: {cfg.tiles}")
    return find_images(folder)[:200]


def explore_task(cfg: DictConfig) -> dict[str, Any]:
    """Load the model (+ latents), start the page, block until stopped; returns the run directory and URL."""
    from rockgen.explore.app import build_app, launch_kwargs  # imports gradio: a clear error without it
    from rockgen.explore.features import ExploreSettings
    from rockgen.explore.service import ExploreService, tile_choices

    run_dir = Path(cfg.paths.run_dir)
    model = load_autoencoder(cfg, "explore")
    latents = None
    if cfg.latents_path:
        if not Path(cfg.latents_path).expanduser().is_file():
            raise FileNotFoundError(f"latents_path: latents file not found: {cfg.latents_path}")
        latents = load_latents(
            Path(cfg.latents_path).expanduser(), expect_fingerprint=encoder_fingerprint(model.ema_model.encoder)
        )
    tiles = tile_choices(latents, _tiles(cfg))
    port = check_host_port(cfg.host, cfg.port)
    settings = ExploreSettings(
        fit=cfg.fit,
        max_images=int(cfg.max_images),
        batch_size=int(cfg.batch_size),
        holdout=float(cfg.holdout),
        seed=int(cfg.seed),
        max_mosaic_pixels=int(cfg.max_mosaic_pixels),
    )
    service = ExploreService(model, latents, labels_csv=cfg.labels_csv, settings=settings)
    step = getattr(model, "loaded_from", {}).get("global_step", "?")
    dim = model.encode(torch.zeros(1, 3, model.image_size, model.image_size)).shape[1]
    header = (
        f"`{cfg.ckpt_path}` (step {step}): {model.image_size}×{model.image_size} px tiles, z_sem of {dim} "
        f"dimensions. Results are saved in `{run_dir}`."
    )
    app = build_app(
        service,
        run_dir,
        header=header,
        tiles=tiles,
        T=int(cfg.T),
        T_latent=int(cfg.T_latent),
        display_size=int(cfg.display_size),
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    app.queue(default_concurrency_limit=1)
    app.launch(**launch_kwargs(cfg.host, port, run_dir))
    host = f"[{cfg.host}]" if ":" in str(cfg.host) else cfg.host
    url = f"http://{host}:{port}/"
    print(f"Explorer running at {url}  (Ctrl-C stops; results in {run_dir})", flush=True)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        deadline = None if cfg.max_seconds is None else time.monotonic() + float(cfg.max_seconds)
        while not stop.wait(0.5):
            if deadline is not None and time.monotonic() > deadline:
                break
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        service.cancel()
        app.close()
        print("Explorer stopped.", flush=True)
    return {"run_dir": run_dir, "url": url, "jobs": list(service.jobs.history)}
