"""Train a DCGAN: `python train.py [experiment=...] [overrides...]`. See README.md."""

import hydra
from omegaconf import DictConfig

from dcgan.cli import run_or_exit
from dcgan.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_or_exit(lambda: train(cfg))


if __name__ == "__main__":
    main()
