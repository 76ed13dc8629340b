"""Run directories and manifests.

A stage writes into `runs/<name>/<stage>.partial/` and renames it to `runs/<name>/<stage>/` only
when it finished: a directory without `.partial` is always complete. The partial directory is
stable (not per process), so a killed job restarted with the same recipe finds its checkpoints.

`manifest.json` records what is needed to trust or reproduce the output: the resolved recipe and
its hash, a fingerprint of every input, package versions, the git commit, metrics and status.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.inputs import classify_input, expand_glob, is_glob, recipe_inputs
from pipeline.recipe import recipe_hash

MANIFEST = "manifest.json"
PACKAGES = ("smolalign", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "mergekit",
            "vllm", "deepspeed", "flash-attn")


@dataclass
class Run:
    """A stage run in progress. Write outputs under `path`; put numbers in `metrics`."""

    path: Path
    final: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    t0: float = field(default_factory=time.time)

    def save_manifest(self, **updates) -> None:
        self.manifest.update(updates, metrics=self.metrics)
        write_json_atomic(self.path / MANIFEST, self.manifest)


@contextmanager
def stage_run(recipe, overwrite: bool = False) -> Iterator[Run]:
    """Open `<out>.partial/`, yield a Run, and on success rename it to `<out>/` (status complete).

    On an exception the partial dir stays (status failed, with the error) so the job can resume,
    and nothing at `<out>/` looks finished.
    """
    final = recipe.output_path()
    partial = final.with_name(final.name + ".partial")
    if (final / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{final} already holds a finished {recipe.stage} run; pass --overwrite "
                              f"to replace it, or set output_dir / name in the recipe")
    run = Run(path=partial, final=final, manifest=new_manifest(recipe))
    previous = read_manifest(partial)
    if previous and previous.get("recipe_sha256") != run.manifest["recipe_sha256"]:
        raise FileExistsError(f"{partial} holds an interrupted run of a different recipe (sha256 "
                              f"{previous.get('recipe_sha256', '?')[:12]}); resuming it would mix the two. "
                              f"Delete {partial} to start over, or rerun the recipe it was started with.")
    run.manifest["resumed"] = previous is not None
    # Several ranks share one run dir: only rank 0 writes the manifest and promotes the result.
    main = is_main_process()
    if main:
        partial.mkdir(parents=True, exist_ok=True)
        run.save_manifest()
    try:
        yield run
    except BaseException as exc:  # KeyboardInterrupt too: mark it, keep the partial dir for resume
        if main:
            run.save_manifest(status="failed", finished_at=_now(),
                              error="".join(traceback.format_exception_only(type(exc), exc)).strip())
        raise
    _barrier()  # every rank has written its share before the directory moves
    if main:
        run.save_manifest(status="complete", finished_at=_now(), duration_s=round(time.time() - run.t0, 1))
        _promote(partial, final)
    _barrier()


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
    """Replace `final` with `partial` so that at no point a half-written `final` exists."""
    trash = final.with_name(final.name + ".old")
    if trash.exists():
        shutil.rmtree(trash)
    if final.exists():
        final.rename(trash)
    partial.rename(final)
    if trash.exists():
        shutil.rmtree(trash)


def new_manifest(recipe) -> dict[str, Any]:
    return {
        "stage": recipe.stage,
        "name": recipe.name,
        "status": "running",
        "started_at": _now(),
        "recipe_file": getattr(recipe, "_source", None),
        "recipe_sha256": recipe_hash(recipe),
        "recipe": recipe.model_dump(mode="json"),
        "inputs": input_fingerprints(recipe),
        "versions": package_versions(),
        "git": git_state(),
        "host": {"python": sys.version.split()[0], "platform": platform.platform()},
    }


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
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write via a temp file + rename: a reader never sees half a JSON file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
