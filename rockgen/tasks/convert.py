"""``task=convert``: a folder, XYZ pyramid or orthomosaic (``data.root``) -> LMDB tile shards (``out``).

    python run.py task=convert data.root=/survey/ortho.tif data.image_size=256 out=/data/ortho-256

Every grid tile the training data module would cut (nodata cells dropped, ``data.fit`` applied) is written
once, with its split group, by :func:`rockgen.data.shards.write_shards`; train on it with
``data.root=<out>``. ``convert.json`` in the run directory records counts, sizes and the time taken.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from rockgen.data.shards import write_shards


def convert(cfg: DictConfig) -> dict[str, Any]:
    from rockgen.tasks import write_json

    if cfg.data.root is None:
        raise ValueError("task=convert needs data.root=<folder, pyramid or orthomosaic>")
    run_dir = Path(cfg.paths.run_dir)
    out = Path(cfg.out).expanduser() if cfg.get("out") else run_dir / "shards"
    dm = hydra.utils.instantiate(cfg.data, crop="grid", augment={})
    dm.setup("predict")
    ds, groups = dm.predict_set, dm.item_groups()
    loader = DataLoader(ds, batch_size=64, num_workers=int(cfg.data.num_workers))

    def tiles():
        for batch in loader:
            # model range back to uint8: v / 127.5 - 1 round-trips exactly
            pixels = ((batch["img"] + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            for tile, index in zip(pixels.numpy(), batch["index"].tolist(), strict=True):
                yield np.ascontiguousarray(tile), groups[index]

    start = time.perf_counter()
    meta = {"root": str(cfg.data.root), "fit": str(cfg.data.fit), "files": len(ds.files)}
    manifest = write_shards(tiles(), out, int(cfg.data.image_size), len(ds), int(cfg.shard_tiles), meta=meta)
    seconds = time.perf_counter() - start
    result = {"manifest": str(manifest), "tiles": len(ds), "files": len(ds.files), "groups": len(set(groups))}
    result.update({"seconds": round(seconds, 2), "tiles_per_s": round(len(ds) / max(seconds, 1e-9), 1)})
    write_json(run_dir / "convert.json", result)
    print(f"wrote {len(ds)} tiles of {cfg.data.image_size} px from {len(ds.files)} file(s) to {out}")
    return result
