"""``generate(cfg)``: the modes of generate.py."""

from __future__ import annotations

import json
import sys

from omegaconf import DictConfig, OmegaConf

from dcgan.errors import UserInputError
from dcgan.metrics import score_checkpoint
from dcgan.sampling import write_grid

MODES: tuple[str, ...] = ("grid", "fid")


def generate(cfg: DictConfig) -> None:
    """Run ``cfg.mode``: ``grid`` writes a PNG grid; ``fid`` prints FID as one JSON line."""
    if cfg.mode == "grid":
        path = write_grid(cfg.checkpoint, cfg.out, cfg.num_images, cfg.seed, cfg.nrow, cfg.device)
        print(f"Wrote {path.resolve()}")
    elif cfg.mode == "fid":
        settings = OmegaConf.to_container(cfg.fid, resolve=True)
        assert isinstance(settings, dict)
        record, path = score_checkpoint(cfg.checkpoint, device=cfg.device, data_dir=cfg.data_dir, **settings)  # type: ignore[arg-type]
        print(json.dumps(record | {"out": str(path.resolve())}))
        print(f"Wrote {path.resolve()}", file=sys.stderr)
    else:
        raise UserInputError(f"mode={cfg.mode!r} is not known; choose one of {', '.join(MODES)}")
