"""What a recipe reads: models and data named by Hub ID, local path, earlier run or `embedded:`.

Whether inputs exist is checked at run time (`check_inputs`), not when a recipe loads: shipped
recipes name outputs of earlier stages that do not exist yet.
"""

from __future__ import annotations

import errno
import glob
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.recipe import RecipeError
from pipeline.core.weights import weights_problem

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOCAL_HINT = re.compile(r"^(\.|/|~|runs/)|\.(jsonl|json|parquet|jinja|safetensors)$")


def classify_input(ref: str) -> str:
    """'embedded', 'local' (exists or clearly a path) or 'hub'."""
    if ref.startswith("embedded:"):
        return "embedded"
    if Path(ref).expanduser().exists() or LOCAL_HINT.search(ref) or ref.count("/") != 1:
        return "local"
    return "hub" if HUB_ID.match(ref) else "local"


def recipe_inputs(recipe) -> list[tuple[str, str]]:
    """(key path, reference) for every model/data input the recipe names: the recipe's own `inputs()`."""
    return recipe.inputs()


class DamagedInput(UserError):
    """An input model or checkpoint whose weights are cut short."""


def check_inputs(recipe) -> None:
    """Every local input exists; embedded names are known (else RecipeError listing the missing); and a
    local model or checkpoint directory has whole weights (else DamagedInput, naming the file)."""
    from pipeline.core.models import EMBEDDED

    problems = []
    for key, ref in recipe_inputs(recipe):
        kind = classify_input(ref)
        if kind == "embedded" and ref.removeprefix("embedded:") not in EMBEDDED:
            problems.append((key, f"unknown embedded model {ref!r}; known: "
                                  + ", ".join(f"embedded:{n}" for n in EMBEDDED)))
        elif kind == "local" and is_glob(ref):
            if not expand_glob(ref):
                problems.append((key, f"no path matches {ref!r}; run the stage that writes it first"))
        elif kind == "local" and not Path(ref).expanduser().exists():
            hint = ""
            if ref.startswith("runs/"):
                stage = ref.split("/")[2] if ref.count("/") >= 2 else "..."
                hint = f"; it is the output of an earlier stage: run that stage first (`make {stage}`)"
            problems.append((key, f"{ref!r} does not exist{hint}"))
    if problems:
        raise RecipeError(recipe._source or recipe.name, problems)
    check_input_weights(recipe)


def check_input_weights(recipe) -> None:
    """A run, checkpoint or model directory used as an input is read whole, or the stage does not start:
    its weights are checked without loading them (pipeline/core/weights.py), which takes milliseconds."""
    for key, ref in recipe_inputs(recipe):
        if classify_input(ref) != "local":
            continue
        for path in map(Path, expand_glob(ref) if is_glob(ref) else [str(Path(ref).expanduser())]):
            problem = weights_problem(path) if path.is_dir() else None
            if problem:
                raise DamagedInput(f"{key}: {problem}; the weights of {path} were cut short (a save or a copy that "
                                   "did not finish): rerun the stage that wrote them, or copy them again")


def is_glob(ref: str) -> bool:
    return any(c in ref for c in "*?[")


def expand_glob(ref: str) -> list[str]:
    """Sorted matches of a glob input (e.g. every APO checkpoint for a soup)."""
    return sorted(glob.glob(str(Path(ref).expanduser())))


DISK_FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def disk_error(exc: BaseException, errnos: tuple[int, ...] = DISK_FULL_OR_READ_ONLY) -> OSError | None:
    """The OSError of a full or read-only disk (or of any of `errnos`) anywhere in `exc`'s chain, or None:
    datasets wraps the Arrow writer's ENOSPC in a DatasetGenerationError. Such an error is not the
    input's fault: it goes on to the stage's disk handling (runs.disk_problem: free space, SMOLALIGN_CACHE)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in errnos:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def hub_errors(ref: str, key: str, repo_type: str = "model") -> Iterator[None]:
    """A Hub ID that cannot be fetched (offline, unreachable, or unknown) and is not in the local
    cache: transformers and datasets raise an OSError with a paragraph; say it in one line, with what
    to do."""
    try:
        yield
    except OSError as e:
        if classify_input(ref) != "hub" or disk_error(e):  # the disk's doing: runs.disk_problem
            raise
        reason = " ".join(str(e).split())[:300]
        download = f"hf download {ref}" + (" --repo-type dataset" if repo_type == "dataset" else "")
        raise UserError(f"{key}: {ref} cannot be loaded from the Hugging Face Hub or its local cache ({reason}); "
                        f"download it where the Hub is reachable (`{download}`) into this machine's cache "
                        f"(HF_HOME), or set {key} to a local path") from None
