"""What several subcommands share: their flags, quoting a path into an override, the default data folder."""

from __future__ import annotations

import argparse

from facecomp.config import DATA_ENV, default_data_root

# What `--model` takes wherever one generator is used (complete, demo, export, serve)
MODEL_HELP = ("generator weights file, run folder or checkpoint; 'shipped' (the default: the weights in this "
              "package) or 'paper-generator' (the paper's generator as shipped; `facecomp weights show NAME`)")


def quote(text: str) -> str:
    """``text`` as a TOML string, for a ``key=value`` override (a path may hold spaces and quotes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def roots_override(dirs: list[str]) -> str:
    """The override that sets ``data.roots`` to these folders."""
    return f"data.roots=[{', '.join(quote(d) for d in dirs)}]"


def add_stage(p: argparse.ArgumentParser, help: str | None = None) -> None:
    from facecomp.train.stages import STAGES

    p.add_argument("--stage", type=int, required=True, choices=tuple(STAGES), help=help)


def add_data_roots(p: argparse.ArgumentParser, required: bool = False) -> None:
    """``--data DIR``, repeatable: the CelebA folders a run trains on (sets data.roots)."""
    default = "" if required else f" (default: ${DATA_ENV}/celeba, else {default_data_root()})"
    p.add_argument("--data", action="append", metavar="DIR", required=required,
                   help="CelebA folder (img_align_celeba/, list_eval_partition.txt); repeat it to train on several "
                   f"(their train partitions together); sets data.roots{default}")


def add_data_folder(p: argparse.ArgumentParser) -> None:
    """``--data DIR``: the one CelebA folder a command reads."""
    p.add_argument("--data", default=default_data_root(), metavar="DIR",
                   help=f"CelebA folder (default: ${DATA_ENV}/celeba, else %(default)s)")


def add_init(p: argparse.ArgumentParser, source: str) -> None:
    """Where a stage starts from: ``--init``, ``--init-unfinished``, ``--from-scratch``."""
    p.add_argument("--init", help=f"previous stage's {source} to start from")
    p.add_argument("--init-unfinished", action="store_true",
                   help="let --init start from a run that has not finished (its newest checkpoint)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train stage 2 or 3 from random weights (without it, those stages need --init)")


def add_network_run(p: argparse.ArgumentParser) -> None:
    """What a network's own training run takes (``parsing train``, ``identity train``): where it runs, --resume,
    the progress bar, dotted overrides."""
    p.add_argument("--run-dir", required=True)
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")


def add_overrides(p: argparse.ArgumentParser, example: str = "train.batch_size=16") -> None:
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"dotted overrides, e.g. {example}")
