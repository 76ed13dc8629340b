"""Run directories and manifests.

A stage writes into `runs/<name>/<stage>.partial/` and renames it to `runs/<name>/<stage>/` only
when it finished: a directory without `.partial` is always complete. The partial directory is
stable (not per process), so a killed job restarted with the same recipe finds its checkpoints.

`manifest.json` records what is needed to trust or reproduce the output: the resolved recipe and
its hash, a fingerprint of every input, package versions, the git commit, metrics and status.
`summary.json` (pipeline/core/summary.py) says what the run did, for the stages and reports that read it.
"""

from __future__ import annotations

import calendar
import errno
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError
from pipeline.core.files import write_json_atomic
from pipeline.core.inputs import classify_input, disk_error, expand_glob, is_glob, recipe_inputs
from pipeline.core.locks import LockBusy, exclusive
from pipeline.core.models import cache_dir
from pipeline.core.preemption import Preempted, check, deferred, stopped_by
from pipeline.core.recipe import recipe_hash
from pipeline.core.redaction import redact
from pipeline.core.summary import write_summary
from pipeline.core.weights import weights_problem

MANIFEST = "manifest.json"
PACKAGES = ("smolalign", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "mergekit",
            "vllm", "deepspeed", "flash-attn")


class RunError(UserError, FileExistsError):
    """A run directory that cannot be used as asked (finished, foreign, busy, or holding another recipe)."""


@dataclass
class Run:
    """A stage run in progress. Write outputs under `path`; put numbers in `metrics` and what a reader of
    the run needs in `summary` (its sections: pipeline/core/summary.py), written when the run completes."""

    path: Path
    final: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    t0: float = field(default_factory=time.time)

    def save_manifest(self, **updates) -> None:
        self.manifest.update(updates, metrics=self.metrics)
        write_json_atomic(self.path / MANIFEST, redact(self.manifest))  # an error message may quote a secret

    def save_summary(self) -> None:
        outputs = [name for name in self.summary.get("outputs", []) if (self.path / name).is_file()]
        write_summary(self.path, redact({"stage": self.manifest["stage"], **self.summary, "outputs": outputs}))

    def end_attempt(self, status: str, **updates) -> None:
        """Close this attempt (status, duration, and `updates`: the error, or the signal and what it saved)
        and total the durations of every attempt."""
        attempt = self.manifest["attempts"][-1]
        attempt.update(status=status, finished_at=_now(), duration_s=round(time.time() - self.t0, 3), **updates)
        total = round(sum(a.get("duration_s", 0.0) for a in self.manifest["attempts"]), 3)
        self.save_manifest(status=status, finished_at=attempt["finished_at"], duration_s=total, **updates)


def parse_shard(text: str | None) -> tuple[int, int]:
    """`--shard i/n` -> (i, n); None -> (0, 1). One share of a job split over machines."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected i/n, e.g. 0/8") from None
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def partial_path(final: Path) -> Path:
    """Where a stage writes until it has finished: `<out>.partial` beside `<out>`."""
    return final.with_name(final.name + ".partial")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json")


# Weights in a launcher's own layout, with no file above: DeepSpeed without zero3_save_16bit_model
# (transformers removes its empty model.safetensors and DeepSpeed writes global_stepN/), FSDP's sharded state dict.
SHARDED_WEIGHT_DIRS = ("global_step*", "pytorch_model_fsdp_*")


def is_complete_checkpoint(ckpt: Path) -> bool:
    return checkpoint_problem(ckpt) is None


def checkpoint_problem(ckpt: Path) -> str | None:
    """None for a complete Trainer checkpoint directory, else why it is not one: it must hold weights, a
    whole trainer_state.json (the last file transformers writes; a kill while writing it leaves JSON that
    does not parse) and no file cut short (pipeline/core/weights.py: the optimizer state included)."""
    has_weights = any((ckpt / f).is_file() for f in WEIGHT_FILES) or any(
        d.is_dir() for pattern in SHARDED_WEIGHT_DIRS for d in ckpt.glob(pattern))
    if not has_weights:
        return "no weights"
    try:
        json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no whole trainer_state.json"
    return weights_problem(ckpt)


def set_aside_dir(run_dir: Path) -> Path:
    """Where checkpoints cut short by a kill are kept: `<out>.incomplete` beside the run (given its
    partial or final directory), so that nothing in it is resumed from, rotated, globbed or promoted."""
    return run_dir.with_name(run_dir.name.removesuffix(".partial") + ".incomplete")


@contextmanager
def stage_run(recipe, overwrite: bool = False) -> Iterator[Run]:
    """Open `<out>.partial/`, yield a Run, and on success rename it to `<out>/` (status complete).

    On an exception the partial dir stays so the job can resume, with the attempt's status: `preempted`
    (SIGTERM or SIGUSR1, pipeline/core/preemption.py), `interrupted` (Ctrl-C) or `failed` (with the error);
    nothing at `<out>/` looks finished. Weights cut short are never promoted. Only one process at a time
    may hold a run directory, and a directory that is not one of our runs is never written into, moved
    or deleted.
    """
    check()  # a stop signal that came while an earlier stage of this command finished: start nothing
    final = recipe.output_path()
    partial = partial_path(final)
    main = is_main_process()
    with run_lock(final) if main else nullcontext():
        run = _open(recipe, final, partial, overwrite, main)
        try:
            with heartbeat(partial / MANIFEST) if main else nullcontext():
                yield run
                if main:  # inside the try: a full disk here is recorded and said in one line like any other
                    run.save_summary()
                    refuse_damaged_weights(partial)
        except BaseException as exc:  # a stop signal or Ctrl-C too: mark it, keep the partial dir for resume
            disk = disk_problem(exc, [partial, cache_dir()]) if isinstance(exc, Exception) else None
            if main:
                with deferred():  # a second SIGTERM must not cut the record of the first short
                    _record_end(run, partial, exc, disk)
            if disk:  # the user's to fix, not a bug: one line, exit 2
                raise UserError(disk) from exc
            raise
        with deferred():  # the run is finished: promote it whole, whatever signal comes now
            _barrier()  # every rank has written its share before the directory moves
            if main:
                (partial / RESERVE).unlink(missing_ok=True)
                run.end_attempt("complete")
                _promote(partial, final)
            _barrier()


def _record_end(run: Run, partial: Path, exc: BaseException, disk: str | None) -> None:
    """Close the attempt in the manifest: preempted (with the signal and what it saved), interrupted or
    failed (with the error)."""
    (partial / RESERVE).unlink(missing_ok=True)  # room for the manifest on a full disk
    stop = stopped_by(exc)
    try:
        if isinstance(stop, Preempted):
            saved = {"saved": stop.saved.name} if stop.saved else {}  # the checkpoint the next attempt resumes from
            run.end_attempt("preempted", signal=stop.signal_name, **saved)
        elif stop is not None:
            run.end_attempt("interrupted", signal="SIGINT")
        else:
            run.end_attempt("failed", error=disk or "".join(traceback.format_exception_only(type(exc), exc)).strip())
    except Exception as manifest_error:  # the original error is the one to show
        print(f"warning: could not record the end of the attempt in {partial / MANIFEST}: {manifest_error}",
              file=sys.stderr)


class DamagedWeights(UserError):
    """A weight file cut short where it is about to be trusted."""


def refuse_damaged_weights(run_dir: Path) -> None:
    """A run is promoted only with whole weights: its own and those of its checkpoints (the merge's soups
    read them), checked without loading (pipeline/core/weights.py)."""
    for directory in [run_dir, *sorted(p for p in run_dir.glob("checkpoint-*") if p.is_dir())]:
        problem = weights_problem(directory)
        if problem:
            raise DamagedWeights(f"{problem}; the run stays unfinished in {run_dir}: check the disk (free space, "
                                 "quota) and rerun the same command")


# A few pages set aside in every partial run directory and freed when the run fails, so that a full
# disk still leaves room to record the failure in the manifest.
RESERVE = ".manifest-reserve"
FULL_BYTES = 1 << 20  # less free space than this is a full disk
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def disk_problem(exc: BaseException, places: list[Path]) -> str | None:
    """One line saying what to do when `exc` is the disk's doing: an OSError (anywhere in its chain) of
    a full, read-only or forbidden place, or any error while one of `places` has no room left (torch and
    safetensors report a failed write without the reason)."""
    seen = disk_error(exc, DISK_ERRNOS)
    if seen is not None:
        where = Path(seen.filename) if seen.filename else (places[0] if places else None)
        if where is None:
            return f"a write failed: {seen.strerror}; free space, or make the run and cache directories writable"
        return f"cannot write {where}: {seen.strerror}; {_disk_advice(where, seen.errno)}"
    for place in places:
        try:
            free = shutil.disk_usage(place).free
        except OSError:
            continue
        if free < FULL_BYTES:
            what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return (f"the disk holding {place} is full ({free} bytes free; the write failed with: {what[:200]}); "
                    f"{_disk_advice(place, errno.ENOSPC)}")
    return None


def _disk_advice(path: Path, code: int) -> str:
    cache = cache_dir().absolute()
    in_cache = path.absolute() == cache or cache in path.absolute().parents
    elsewhere = "set SMOLALIGN_CACHE to another directory" if in_cache else "set output_dir (or name) to another place"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"free space there, or {elsewhere} with room, then rerun (an interrupted run resumes)"
    return f"make it writable, or {elsewhere} that is"


def check_output_dir(recipe, overwrite: bool = False) -> None:
    """Refuse an output directory that no run could finish in without harm, before anything loads
    (the CLI calls this first; stage_run again): a file or a symbolic link where the run directory
    would go, a directory inside another run, a foreign directory, or a finished run (unless
    `overwrite`)."""
    final = recipe.output_path()
    partial = partial_path(final)
    _refuse_unusable_place(final, partial)
    _refuse_foreign(final, "output directory")
    _refuse_foreign(partial, "partial directory")
    if (final / MANIFEST).exists() and not overwrite:
        raise RunError(f"{final} already holds a finished {recipe.stage} run; pass --overwrite "
                       f"to replace it, or set output_dir / name in the recipe")


def _refuse_unusable_place(final: Path, partial: Path) -> None:
    """A run ends by renaming `<out>.partial` to `<out>`: neither may be a file or a link (the rename
    would replace the user's file, or the link rather than what it points to), and `<out>` may not
    lie inside another run (it would change that run's content, which its hash identifies)."""
    for path, what in ((final, "output_dir"), (partial, "its partial directory")):
        if path.is_symlink():
            raise RunError(f"{path} ({what}) is a symbolic link to {os.readlink(path)}; a finished run replaces its "
                           f"directory, which would replace the link: set output_dir to the real directory "
                           f"({final.resolve()})")
        if path.exists() and not path.is_dir():
            raise RunError(f"{path} ({what}) is a file, not a directory; choose another output_dir (or name) "
                           "or move the file away")
    for parent in final.absolute().parents:
        if is_run(parent):
            raise RunError(f"{final} (output_dir) is inside the run {parent}; a run holds only what its stage "
                           "wrote: choose an output_dir outside it")


def is_run(path: Path) -> bool:
    """A directory holding one of our manifests (finished or partial)."""
    try:
        manifest = read_manifest(path)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "stage" in manifest and "recipe_sha256" in manifest


def _open(recipe, final: Path, partial: Path, overwrite: bool, main: bool) -> Run:
    """Check the output and partial directories, then start (or resume) the run's manifest."""
    check_output_dir(recipe, overwrite)
    manifest = new_manifest(recipe)
    previous = read_manifest(partial)
    if previous and previous.get("identity_sha256") != manifest["identity_sha256"]:
        if not overwrite:
            raise RunError(f"{partial} holds an interrupted run of a different recipe (sha256 "
                           f"{str(previous.get('recipe_sha256', '?'))[:12]}); resuming it would mix the two. "
                           f"Pass --overwrite to discard it and start over, or rerun the recipe it was started with.")
        if main:
            shutil.rmtree(partial)
            shutil.rmtree(set_aside_dir(partial), ignore_errors=True)  # that run's half-saved checkpoints
        previous = None
    manifest["resumed"] = previous is not None
    attempts = (previous or {}).get("attempts", [])
    if main:
        record_killed_attempts(attempts, partial)
    manifest["attempts"] = attempts + [{"started_at": manifest["started_at"], "host": socket.gethostname(),
                                        "pid": os.getpid()}]
    run = Run(path=partial, final=final, manifest=manifest)
    if main:
        partial.mkdir(parents=True, exist_ok=True)
        for stale in partial.glob(f".{MANIFEST}.*.tmp"):  # a writer killed mid-write left it
            stale.unlink()
        run.save_manifest()
        (partial / RESERVE).write_bytes(b"\0" * (64 << 10))
    return run


# How often a running stage touches its manifest: the precision of a killed attempt's recorded duration.
HEARTBEAT_S = 5.0


@contextmanager
def heartbeat(manifest: Path, every: float = HEARTBEAT_S) -> Iterator[None]:
    """Touch the run's manifest every `every` seconds while the block runs. A SIGKILL leaves no
    chance to record the end of an attempt; the manifest's mtime then says when it was last alive."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                os.utime(manifest)
            except OSError:  # the directory moved (promotion) or the disk went away: nothing to do here
                pass

    thread = threading.Thread(target=beat, name="smolalign-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def record_killed_attempts(attempts: list[dict[str, Any]], partial: Path) -> None:
    """Attempts that never recorded their end were killed (SIGKILL, the OOM killer, a lost node): the
    caller holds the run's lock, so none of them still runs. Mark them `killed` and, for the latest,
    record its last sign of life (the heartbeat: the manifest's mtime, at most HEARTBEAT_S old when it
    died, or a file it wrote after that beat), the newest complete checkpoint it left, and its duration
    up to then."""
    for i, attempt in enumerate(attempts):
        if "status" in attempt:
            continue
        attempt["status"] = "killed"
        if i < len(attempts) - 1:  # its traces are overwritten by later attempts: nothing more is known
            continue
        seen = max([(partial / MANIFEST).stat().st_mtime] + [p.lstat().st_mtime for p in partial.rglob("*")])
        started = calendar.timegm(time.strptime(attempt["started_at"], "%Y-%m-%dT%H:%M:%SZ"))
        checkpoints = sorted((p for p in partial.glob("checkpoint-*")
                              if p.name.removeprefix("checkpoint-").isdigit() and is_complete_checkpoint(p)),
                             key=lambda p: int(p.name.removeprefix("checkpoint-")))
        attempt.update(last_seen_at=_now(seen), last_checkpoint=checkpoints[-1].name if checkpoints else None,
                       duration_s=round(max(0.0, seen - started), 3))


def join_run(recipe) -> Path:
    """The partial directory of a run whose work is split over machines (`synth --shard i/n`): each
    share writes its own files in it, and a last `stage_run` collects and finishes. The first share
    writes the run's manifest; a share of a different recipe is refused, so two recipes never mix."""
    final = recipe.output_path()
    partial = partial_path(final)
    _refuse_unusable_place(final, partial)
    _refuse_foreign(final, "output directory")
    _refuse_foreign(partial, "partial directory")
    if (final / MANIFEST).exists():
        raise RunError(f"{final} already holds a finished {recipe.stage} run; pass --overwrite to the collecting "
                       "run (without --shard) to replace it")
    manifest = new_manifest(recipe)
    previous = read_manifest(partial)
    if previous and previous.get("identity_sha256") != manifest["identity_sha256"]:
        raise RunError(f"{partial} holds a run of a different recipe (sha256 "
                       f"{str(previous.get('recipe_sha256', '?'))[:12]}); its shares would mix with this one's. "
                       "Use the recipe it was started with, or another output_dir.")
    if previous is None:
        partial.mkdir(parents=True, exist_ok=True)
        write_json_atomic(partial / MANIFEST, {**manifest, "status": "sharded", "attempts": []})
    return partial


def _refuse_foreign(path: Path, what: str) -> None:
    """A non-empty directory without our manifest was not made by us: never touch it."""
    if path.is_dir() and not (path / MANIFEST).is_file() and any(path.iterdir()):
        raise RunError(f"{path} is not a smolalign run (no {MANIFEST}) and is not empty; the {what} must be "
                       f"one of our runs or empty: choose another output_dir (or name), or empty it yourself")


@contextmanager
def run_lock(final: Path) -> Iterator[None]:
    """Hold `<out>.lock` while the run is open. flock is released by the kernel when its process
    dies, and no forked helper (a data worker) keeps it (pipeline/core/locks.py), so a killed run's lock is
    taken over by the next one; the file says who holds it."""
    try:
        with exclusive(final.with_name(final.name + ".lock"), f"the run {final}", wait=False):
            yield
    except LockBusy as busy:
        raise RunError(f"{final} is in use by {busy}; wait for it to finish, or stop it") from None


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate job, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _promote(partial: Path, final: Path) -> None:
    """Replace `final` (one of our runs, or absent or empty) with `partial`, so that at no point a
    half-written `final` exists."""
    trash = final.with_name(final.name + ".old")
    if trash.exists() and (trash / MANIFEST).is_file():
        shutil.rmtree(trash)
    if final.exists():
        final.rename(trash)
    partial.rename(final)
    if trash.exists():
        shutil.rmtree(trash)


# Recipe fields that do not change what a run computes: editing them does not block a resume.
NON_IDENTITY_FIELDS = {"description", "output_dir"}
NON_IDENTITY_TRAINING_KEYS = {"logging_steps", "logging_strategy", "logging_first_step", "report_to", "run_name",
                              "disable_tqdm", "save_total_limit", "push_to_hub", "hub_model_id", "hub_token",
                              "hub_private_repo", "hub_strategy"}
# How a generation server is reached (synth, merge sweep, eval): fixing them after a run gave up
# (a longer retry budget, a moved server) must resume it with the rows it has, not start over.
NON_IDENTITY_BACKEND_KEYS = {"base_url", "served_model_name", "api_key_env", "concurrency", "timeout_s",
                             "retry_budget_s"}


def identity_data(data: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved recipe (`model_dump(mode="json")`) that defines what a run computes:
    the recipe less NON_IDENTITY_*. `smolalign plan` uses it to say which differences change a run."""
    data = {k: v for k, v in data.items() if k not in NON_IDENTITY_FIELDS}
    if isinstance(data.get("training"), dict):
        data["training"] = {k: v for k, v in data["training"].items() if k not in NON_IDENTITY_TRAINING_KEYS}
    return _without_connection(data)


def _without_connection(block: Any) -> Any:
    """`block` less NON_IDENTITY_BACKEND_KEYS in every `backend` mapping, however deep (the merge sweep's
    is `sweep.eval.backend`)."""
    if not isinstance(block, dict):
        return block
    out = {k: _without_connection(v) for k, v in block.items()}
    if isinstance(out.get("backend"), dict):
        out["backend"] = {k: v for k, v in out["backend"].items() if k not in NON_IDENTITY_BACKEND_KEYS}
    return out


def identity_hash(recipe) -> str:
    """sha256 of the fields that define what a run computes (identity_data)."""
    data = identity_data(recipe.model_dump(mode="json"))
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def new_manifest(recipe) -> dict[str, Any]:
    return {
        "stage": recipe.stage,
        "name": recipe.name,
        "status": "running",
        "started_at": _now(),
        "recipe_file": getattr(recipe, "_source", None),
        "recipe_sha256": recipe_hash(recipe),
        "identity_sha256": identity_hash(recipe),
        "recipe": redact(recipe.model_dump(mode="json")),
        "inputs": input_fingerprints(recipe),
        "versions": package_versions(),
        "git": git_state(),
        "host": host_info(),
    }


def host_info() -> dict[str, Any]:
    """Python, platform and, where a stage runs on GPUs, which ones and the CUDA build: a throughput or a
    loss curve is read differently on an H100 than on a CPU. torch is looked up, never imported here
    (CPU-only stages such as synth against a server do not load it)."""
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


def input_fingerprints(recipe) -> dict[str, Any]:
    out = {}
    for key, ref in recipe_inputs(recipe):
        if is_glob(ref):  # a soup's `checkpoint-*`: record each checkpoint it expanded to
            for i, match in enumerate(expand_glob(ref)):
                out[f"{key}[{i}]"] = fingerprint(match)
        else:
            out[key] = fingerprint(ref)
    return out


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    p = Path(path) / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else None


def fingerprint(ref: str) -> dict[str, Any]:
    """Identify an input: Hub ID, an earlier run (its manifest hash) or a file/dir content hash."""
    kind = classify_input(ref)
    if kind != "local":
        return {"kind": kind, "ref": ref}
    path = Path(ref).expanduser()
    if not path.exists():
        return {"kind": "missing", "ref": ref}
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is not None:
        return {"kind": "run", "ref": ref, "stage": manifest.get("stage"), "status": manifest.get("status"),
                "recipe_sha256": manifest.get("recipe_sha256"), "content_sha256": content_hash(path)}
    return {"kind": "dir" if path.is_dir() else "file", "ref": ref, "content_sha256": content_hash(path)}


def content_hash(path: Path) -> str:
    """sha256 over (relative name, bytes) of every file; the manifest itself is left out."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if f.name == MANIFEST or ".partial" in f.parts:
            continue
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_state() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _now(when: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
