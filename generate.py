"""Draw a grid of samples from a trained DCGAN: `python generate.py checkpoint=<ckpt or run dir>`."""

import hydra
from omegaconf import DictConfig

from dcgan.cli import run_or_exit
from dcgan.sampling import write_grid


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    path = run_or_exit(lambda: write_grid(cfg.checkpoint, cfg.out, cfg.num_images, cfg.seed, cfg.nrow, cfg.device))
    print(f"Wrote {path.resolve()}")


if __name__ == "__main__":
    main()
