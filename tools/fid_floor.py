"""``python tools/fid_floor.py [dataset=mnist] [num_samples=10000] [...]``: FID's real-data floor.

N real training images (the fixed random subset FID references use) against the test split,
through the same features and Fréchet distance as a model's score: the FID of a generator that
draws real images, which no model beats at that N (FID falls as N grows), with its precision and
recall (what a perfect generator scores on them). A folder (dataset=folder dataset.path=...),
which is its own reference: one random half of its images against the other (N = half). One
JSON line on stdout. Settings (Hydra overrides of conf/train.yaml and conf/fid.yaml):
  dataset=mnist|fashion_mnist|folder  dataset.image_size=28|64|128  num_samples=10000 (N)
  reference_samples=null (test images: all)  eval.weights, eval.cache_dir as for train.py
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from dcgan.cli import exit_with, instantiate_node
from dcgan.datasets import FolderData
from dcgan.errors import ReportedError, UserInputError, entry_point
from dcgan.metrics import InceptionFeatures, frechet_distance, precision_recall, reference_features

CONF = Path(__file__).resolve().parents[1] / "conf"


def floor(overrides: list[str]) -> dict[str, object]:
    own = {
        k: v for k, v in (o.split("=", 1) for o in overrides if o.split("=")[0] in ("num_samples", "reference_samples"))
    }
    rest = [o for o in overrides if o.split("=")[0] not in own]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=rest)
    n = int(own.get("num_samples", 10000))
    n_ref = None if own.get("reference_samples", "null") == "null" else int(own["reference_samples"])
    data = instantiate_node(cfg.dataset, "dataset")
    extractor = InceptionFeatures(cfg.eval.weights, cfg.eval.batch_size)
    if isinstance(data, FolderData):
        if own:
            raise UserInputError(
                f"{', '.join(own)} do not apply to a folder: its floor is one half of its images against the other"
            )
        # The folder's cached reference features (all its images), halved at random, fixed.
        everything, _, _ = reference_features(data.reference("train"), None, extractor, cfg.eval.cache_dir)
        order = torch.randperm(len(everything), generator=torch.Generator().manual_seed(0))
        train, test = everything[order[: len(order) // 2]], everything[order[len(order) // 2 :]]
        split = "other half"
    else:
        train, _, _ = reference_features(data.reference("train"), n, extractor, cfg.eval.cache_dir)
        test, key, _ = reference_features(data.reference("test"), n_ref, extractor, cfg.eval.cache_dir)
        split = key.split
    return {
        "dataset": data.name,
        "image_size": data.image_size,
        "num_samples": len(train),
        "num_reference": len(test),
        "reference_split": split,
        "fid": frechet_distance(train, test),
        **precision_recall(train, test),
    }


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(overrides):
        print(__doc__.strip())
        return 0
    with entry_point():  # a config Hydra cannot compose: one line, exit 2
        try:
            print(json.dumps(floor(overrides)))
        except ReportedError as e:
            exit_with(e)
    return 0


if __name__ == "__main__":
    # Progress on stderr, as train.py and generate.py give it: 20,000 Inception passes take
    # about 40 min on a 2-core CPU. stdout keeps the one JSON line.
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    sys.exit(main())
