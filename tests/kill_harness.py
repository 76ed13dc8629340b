"""Runs the `smolalign` CLI in this process, held still at one named moment, so that a test can send
it a real signal (SIGKILL, SIGTERM, SIGINT, ...) exactly there (a tiny model saves a checkpoint in
milliseconds: polling for a file from outside would mostly arrive too late).

    python tests/kill_harness.py MOMENT MARKER_DIR STAGE --recipe R ...

MOMENT is one of
  optimizer:checkpoint-N   just after `checkpoint-N/optimizer.pt` is written, before the rest of the
                           checkpoint (RNG states, trainer_state.json)
  step:N                   in the middle of optimizer step N: after its forward and backward pass,
                           before the optimizer updates the weights
  map-worker               in each `datasets.map` worker (a forked child of the stage) at its first row
  generate:N               at the start of the N-th call to a generation backend (synth, eval, the sweep)
  rollout:N                at the start of the N-th rollout generation of the rl stage (TRL's GRPOTrainer
                           generating the completions of a step, its prompts drawn), before any token
  merge                    just before MergeKit writes a merge
On reaching it, the process writes MARKER_DIR/<its pid> (holding its torchrun RANK, if any) and waits,
until a stop signal has been received (SIGTERM, SIGUSR1; the stage's own handler decides what that
does), the test removes that file (it goes on without a signal) or 600 s have passed; nothing else is
changed. The signal itself, and everything after it, is the test's.
"""

import os
import sys
import time
from pathlib import Path


def hold(marker_dir: Path) -> None:
    try:
        from pipeline.core.preemption import requested
    except ImportError:  # code from before stop signals were handled: only a signal's own action ends the wait
        def requested():
            return None

    marker = marker_dir / str(os.getpid())
    marker.write_text(os.environ.get("RANK", ""))  # which rank of a torchrun job this is
    deadline = time.time() + 600
    while requested() is None and marker.exists() and time.time() < deadline:
        time.sleep(0.05)


def hold_in_step(step: int, marker_dir: Path) -> None:
    import transformers

    training_step = transformers.Trainer.training_step

    def step_then_hold(self, *args, **kwargs):
        loss = training_step(self, *args, **kwargs)
        if self.state.global_step == step - 1:  # global_step counts the steps already taken
            hold(marker_dir)
        return loss

    transformers.Trainer.training_step = step_then_hold


def hold_at_generation(call: int, marker_dir: Path) -> None:
    import pipeline.generation

    calls = 0
    for backend in (pipeline.generation.TransformersBackend, pipeline.generation.OpenAIBackend):
        def generate_after_hold(self, *args, _generate=backend.generate, **kwargs):
            nonlocal calls
            calls += 1
            if calls == call:
                hold(marker_dir)
            return _generate(self, *args, **kwargs)

        backend.generate = generate_after_hold


def hold_at_rollout(call: int, marker_dir: Path) -> None:
    import trl

    calls, generate = 0, trl.GRPOTrainer._generate_single_turn

    def hold_then_generate(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == call:
            hold(marker_dir)
        return generate(self, *args, **kwargs)

    trl.GRPOTrainer._generate_single_turn = hold_then_generate


def hold_before_merge(marker_dir: Path) -> None:
    import mergekit.merge

    run_merge = mergekit.merge.run_merge

    def hold_then_merge(*args, **kwargs):
        hold(marker_dir)
        return run_merge(*args, **kwargs)

    mergekit.merge.run_merge = hold_then_merge


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
    import faulthandler
    import signal

    faulthandler.register(signal.SIGQUIT, all_threads=True)  # a test that waited too long asks where it hangs
    # Tests started in the background (`make test &`, nohup, some CI runners) have SIGINT ignored, and every process
    # they start inherits that (measured: SigIgn 0x1007 in the pytest workers): the command a test stands for,
    # typed at a terminal, gets Ctrl-C. Before, the Ctrl-C tests waited 300 s whenever the suite ran in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    moment, marker_dir, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    if moment.startswith("optimizer:"):
        hold_after_optimizer_save(moment.removeprefix("optimizer:"), marker_dir)
    elif moment.startswith("step:"):
        hold_in_step(int(moment.removeprefix("step:")), marker_dir)
    elif moment == "map-worker":
        hold_in_map_workers(marker_dir)
    elif moment.startswith("generate:"):
        hold_at_generation(int(moment.removeprefix("generate:")), marker_dir)
    elif moment.startswith("rollout:"):
        hold_at_rollout(int(moment.removeprefix("rollout:")), marker_dir)
    elif moment == "merge":
        hold_before_merge(marker_dir)
    else:
        sys.exit(f"unknown moment {moment!r}")
    from pipeline.cli import main

    sys.exit(main(argv))
