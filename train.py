"""Train a DCGAN: `python train.py [experiment=...] [overrides...]`. See README.md."""

from dcgan.errors import entry_point

with entry_point():  # before the imports: Ctrl-C while torch loads ends in one line
    import hydra
    from omegaconf import DictConfig

    from dcgan.cli import run_or_exit
    from dcgan.train import objective, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # The return value is what a Hydra sweeper (e.g. Optuna) minimizes.
    return run_or_exit(lambda: objective(train(cfg)))


if __name__ == "__main__":
    with entry_point():
        main()
