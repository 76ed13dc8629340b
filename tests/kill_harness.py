"""Runs the `smolalign` CLI in this process, held still at one named moment, so that a test can send
it a real SIGKILL exactly there (a tiny model saves a checkpoint in milliseconds: polling for a file
from outside would mostly arrive too late).

    python tests/kill_harness.py MOMENT MARKER_DIR STAGE --recipe R ...

MOMENT is one of
  optimizer:checkpoint-N   just after `checkpoint-N/optimizer.pt` is written, before the rest of the
                           checkpoint (RNG states, trainer_state.json)
  map-worker               in each `datasets.map` worker (a forked child of the stage) at its first row
On reaching it, the process writes MARKER_DIR/<its pid> and sleeps; nothing else is changed. The kill
itself, and everything after it, is the test's.
"""

import os
import sys
import time
from pathlib import Path


def hold(marker_dir: Path) -> None:
    (marker_dir / str(os.getpid())).write_text("")
    time.sleep(600)


def hold_after_optimizer_save(checkpoint: str, marker_dir: Path) -> None:
    import torch

    save = torch.save

    def save_then_hold(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        path = Path(str(f))
        if path.name == "optimizer.pt" and path.parent.name == checkpoint:
            hold(marker_dir)

    torch.save = save_then_hold


def hold_in_map_workers(marker_dir: Path) -> None:
    import pipeline.data.mixture

    main, encode_row = os.getpid(), pipeline.data.mixture.encode_row

    def encode_then_hold(*args, **kwargs):
        if os.getpid() != main:  # a forked worker; the main process only waits for them
            hold(marker_dir)
        return encode_row(*args, **kwargs)

    pipeline.data.mixture.encode_row = encode_then_hold


if __name__ == "__main__":
    moment, marker_dir, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    if moment.startswith("optimizer:"):
        hold_after_optimizer_save(moment.removeprefix("optimizer:"), marker_dir)
    elif moment == "map-worker":
        hold_in_map_workers(marker_dir)
    else:
        sys.exit(f"unknown moment {moment!r}")
    from pipeline.cli import main

    sys.exit(main(argv))
