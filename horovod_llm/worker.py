"""Rank entry point for `horovodrun`:

    horovodrun -np 2 -H localhost:2 --gloo --network-interface lo \\
        python -m horovod_llm.worker configs/local.yaml [section.key=value ...]

Every rank loads the same config and calls the same `train_worker` as the Spark launcher.
"""

from __future__ import annotations

import dataclasses
import sys

from horovod_llm import launchers
from horovod_llm.config import RunConfig, load_config, to_dict
from horovod_llm.errors import UserError
from horovod_llm.launchers.rank_process import rank_process
from horovod_llm.training.train import train_worker


def rank_config(argv: list[str]) -> RunConfig:
    """The config file and overrides. The credentials `horovod-llm train
    train.launcher=horovodrun` kept out of the file come from the driver as training
    starts (secret_channel.py), never through the environment: horovodrun puts the
    whole environment on the ranks' command lines."""
    return load_config(argv[0], argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m horovod_llm.worker CONFIG.yaml [section.key=value ...]", file=sys.stderr)
        return 2
    try:
        config = rank_config(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The process runs under horovodrun whatever the file says (configs/local.yaml names
    # the Spark launcher): its ranks and its summary say so.
    horovodrun = launchers.launcher("horovodrun")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, launcher=horovodrun.name))
    rank_process(train_worker, to_dict(config), horovodrun.launch_info(), peer_lost_grace_s=horovodrun.peer_lost_grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
