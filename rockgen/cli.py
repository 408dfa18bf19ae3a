"""rockgen's command line (Hydra): ``rockgen [task=train] [template=demo] [key=value ...]``.

    rockgen                                                   # demo: tiny DiffAE on embedded demo tiles
    rockgen template=rock128 data.root=/data/tiles trainer.devices=4 strategy=ddp
    rockgen task=infer_latents ckpt_path=logs/train/demo/checkpoints/last.ckpt
    python -m rockgen ...                                     # the same; rockgen ... in a checkout

The configs ship inside the package (``rockgen/configs``), so an installed wheel works from any directory.
Every run writes into one directory (``logs/<task>/<run_name>``), printed at the end.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from rockgen.presets import register

register()


@hydra.main(version_base="1.3", config_path="configs", config_name="run")
def main(cfg: DictConfig):
    from rockgen.tasks import run_task

    return run_task(cfg)
