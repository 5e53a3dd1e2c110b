"""Images and scores from a trained DCGAN: `python generate.py [mode=grid|fid] checkpoint=<ckpt or run dir>`."""

from dcgan.errors import entry_point

with entry_point():  # before the imports: Ctrl-C while torch loads ends in one line
    import hydra
    from omegaconf import DictConfig

    from dcgan.cli import run_or_exit
    from dcgan.generate import generate


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    run_or_exit(lambda: generate(cfg))


if __name__ == "__main__":
    with entry_point():
        main()
