"""rockgen's command line: ``python run.py [task=train] [template=demo] [key=value ...]`` (Hydra).

    python run.py                                              # demo: tiny DiffAE on embedded demo tiles
    python run.py template=rock128 data.root=/data/tiles trainer.devices=4 strategy=ddp
    python run.py task=infer_latents ckpt_path=logs/train/demo/checkpoints/last.ckpt

Every run writes into one directory (``logs/<task>/<run_name>``), printed at the end.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import templates

templates.register()


@hydra.main(version_base="1.3", config_path="configs", config_name="run")
def main(cfg: DictConfig):
    from rockgen.tasks import run_task

    return run_task(cfg)


if __name__ == "__main__":
    main()
