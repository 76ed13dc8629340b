"""The `smolalign` command: one entry point for every stage.

    smolalign STAGE --recipe FILE [--set key=value ...] [--overwrite]
    smolalign synth --recipe FILE [--recipe FILE]  # synth-traces / synth-pairs, by the recipe's stage
    smolalign validate FILE [FILE ...] [--trl]  # schema + TRL args + combinations, no model loads
    smolalign prepare --recipe FILE [--shard I/N]   # build a training stage's mixture ahead of the GPU job
    smolalign prepare-model [NAME ...]        # build the embedded default checkpoints
    smolalign plan RECIPE [RECIPE ...] [--gpus N --gpu h100] [--against OTHER.yaml]   # before booking GPUs
    smolalign demo                            # the whole pipeline on recipes/demo/, CPU

Stages: midtrain, synth-traces, synth-pairs, sft, apo, merge, eval. Exit codes: 0 ok; 2 an error the
user can fix (a bad recipe or input, a busy or foreign run directory: one line on stderr, and a
recipe error is found before anything loads); 75 stopped by SIGTERM or SIGUSR1 (a training stage saved
the step it was on; the same command resumes: pipeline/core/preemption.py); 130 stopped by Ctrl-C; 1 a bug
or a failure while running (traceback).

This module is the top of the house: it dispatches to the stage modules through the registry
(pipeline/core/stages.py), so the foundation never imports a stage. Each stage module has
`run(recipe, ...)` and may have `check(recipe) -> [(key, problem)]` for what only it can judge (eval
task names, synth filter settings); `load` runs those checks with the foundation's, for `validate`
and every run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.inputs import check_inputs
from pipeline.core.preemption import INTERRUPTED_EXIT, PREEMPTED_EXIT, Preempted, handling_stop_signals, stopped_by
from pipeline.core.recipe import RecipeError, load_recipe, raise_problems
from pipeline.core.redaction import redact, redact_text
from pipeline.core.stages import STAGES, stage_module

SHARDED = [stage for stage, spec in STAGES.items() if spec.shards]  # the generation stages: `smolalign synth`
DEMO_RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "demo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smolalign", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run the {stage} stage")
        p.add_argument("--recipe", required=True, help="recipe YAML")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key, e.g. training.learning_rate=1e-5 (repeatable)")
        p.add_argument("--overwrite", action="store_true", help="replace a finished run of this stage")
        if STAGES[stage].shards:
            p.add_argument("--shard", metavar="I/N", help="generate only shard I of N (many machines, one job); "
                                                         "a last run without --shard collects and finishes")
    y = sub.add_parser("synth", help=f"run a {' or '.join(SHARDED)} recipe (the recipe's `stage` decides)")
    y.add_argument("--recipe", required=True, action="append", help="recipe YAML (repeatable)")
    y.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    y.add_argument("--overwrite", action="store_true")
    y.add_argument("--shard", metavar="I/N")
    v = sub.add_parser("validate", help="check recipes without running them")
    v.add_argument("files", nargs="+")
    v.add_argument("--inputs", action="store_true", help="also check that local inputs exist")
    v.add_argument("--trl", action="store_true", help="also build TRL's config, so that its own cross-field checks "
                                                      "run (imports TRL: seconds; every run does it before loading)")
    d = sub.add_parser("prepare", help="tokenize, mask, budget and pack a midtrain/sft recipe's mixture into the "
                                       "cache (CPU), so the training job only memory-maps it")
    d.add_argument("--recipe", required=True)
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument("--shard", metavar="I/N", help="tokenize share I of N of every source; a last run without "
                                                  "--shard collects the shares and packs")
    q = sub.add_parser("plan", help="what recipes train on, how they differ from the published config and from "
                                    "another variant, and what they cost (no model loads, offline)")
    q.add_argument("recipes", nargs="+", metavar="RECIPE")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every recipe planned (not of --against), e.g. training.max_length=32768")
    q.add_argument("--gpus", type=int, default=8, help="GPUs the job runs on (default 8)")
    q.add_argument("--gpu", choices=["h100", "h200", "a100"], default="h100")
    q.add_argument("--against", metavar="OTHER.yaml", help="a second recipe: every key that differs from it")
    q.add_argument("--launcher", default=None, metavar="ddp|zero3|fsdp2|none|FILE",
                   help="accelerate config of the job (recipes/accelerate/); default zero3, or none on 1 GPU")
    q.add_argument("--gpu-check", default="runs/gpu-check.json", help="throughput measured by `make gpu-check`")
    q.add_argument("--vllm-tokens-per-s", type=float, help="synth: the vLLM generation throughput to cost at")
    q.add_argument("--out", default="runs/plan.json", help="where plan.json goes (default runs/plan.json)")
    m = sub.add_parser("prepare-model", help="build the embedded default checkpoints")
    m.add_argument("names", nargs="*", help="default: all")
    sub.add_parser("demo", help="run the whole pipeline on recipes/demo/ (CPU)")
    args = parser.parse_args(argv)
    sys.excepthook = _redacted_traceback

    try:
        with handling_stop_signals():
            return dispatch(args)
    except BaseException as e:
        code = _said_in_one_line(e)
        if code is None:  # a bug: the traceback is the message
            raise
        return code


def _end_progress_bars() -> None:
    """A stage stopped in the middle of a progress bar: end the bar's line, so that the message starts one."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", [])):
        bar.close()


def dispatch(args) -> int:
    if args.command == "validate":
        return validate(args.files, args.inputs, args.trl)
    if args.command == "prepare":
        return prepare(args.recipe, args.overrides, args.shard)
    if args.command == "plan":
        return plan(args)
    if args.command == "prepare-model":
        return prepare_models(args.names)
    if args.command == "demo":
        return demo()
    if args.command == "synth":
        for path in args.recipe:
            stage = load(path, args.overrides).stage
            if stage not in SHARDED:
                raise RecipeError(path, [("stage", f"`smolalign synth` runs {' or '.join(SHARDED)} "
                                                   f"recipes; this one is `{stage}`")])
            run_stage(stage, path, args.overrides, args.overwrite, args.shard)
        return 0
    return run_stage(args.command, args.recipe, args.overrides, args.overwrite, getattr(args, "shard", None))


def _said_in_one_line(e: BaseException) -> int | None:
    """Say on stderr, in one line, what stopped the command and return its exit code; None for a bug."""
    _end_progress_bars()
    stop = stopped_by(e)
    if isinstance(stop, Preempted):
        saved = f"; saved {stop.saved}" if stop.saved else ""
        print(f"preempted: stopped by {stop.signal_name}{saved}; the same command resumes (exit {PREEMPTED_EXIT})",
              file=sys.stderr)
        return PREEMPTED_EXIT
    if stop is not None:
        print("interrupted (Ctrl-C): an unfinished run stays where it was; the same command resumes it (send SIGTERM "
              "instead to have a training stage save the step it is on first)", file=sys.stderr)
        return INTERRUPTED_EXIT
    if isinstance(e, UserError):  # bad input, a bad recipe, a busy or foreign run dir: one line, exit 2
        print(f"error: {redact_text(str(e))}", file=sys.stderr)
        return 2
    if isinstance(e, OSError):  # a full, read-only or forbidden place outside a run (its lock, the cache): the same
        from pipeline.core.runs import disk_problem

        problem = disk_problem(e, [])
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    return None


def _redacted_traceback(kind, error, tb) -> None:
    """A bug's traceback (exit 1), with any secret its messages quote cut out."""
    import traceback

    sys.stderr.write(redact_text("".join(traceback.format_exception(kind, error, tb))))


def load(recipe_file: str | Path, overrides: list[str] = (), stage: str | None = None, libraries: bool = False):
    """The recipe, checked by the foundation and by its stage, and with `libraries` by the libraries it will
    run (TRL's own config checks: they import TRL). Raises RecipeError."""
    recipe = load_recipe(recipe_file, overrides, stage=stage)
    check = getattr(stage_module(recipe.stage), "check", None)
    if check is not None:
        raise_problems(recipe, check(recipe))
    if libraries:
        raise_problems(recipe, recipe.library_problems())
    return recipe


def run_stage(stage: str, recipe_file: str, overrides: list[str] = (), overwrite: bool = False,
              shard: str | None = None) -> int:
    from pipeline.core.runs import check_output_dir

    recipe = load(recipe_file, overrides, stage=stage, libraries=True)
    check_inputs(recipe)
    if not shard:  # a share checks its own (pipeline.core.runs.join_run)
        check_output_dir(recipe, overwrite)  # before any model or data loads
    extra = {"shard": shard} if shard else {}
    out = stage_module(stage).run(recipe, overwrite=overwrite, **extra)
    print(f"{stage}: done -> {out}")
    return 0


def validate(files: list[str], inputs: bool = False, libraries: bool = False) -> int:
    failed = 0
    for f in files:
        launcher = _launcher_in(f)
        if launcher is not None:  # recipes/accelerate/*.yaml: checked as what they are
            if _is_accelerate_config(launcher):
                print(f"ok    {f} (accelerate launcher config, {launcher['distributed_type']})")
            else:
                failed += 1
                print(f"FAIL  {f}: an accelerate launcher config whose deepspeed_config is not a mapping with a "
                      "zero_stage of 0 to 3 (see recipes/accelerate/zero3.yaml)")
            continue
        try:
            recipe = load(f, libraries=libraries)
            if inputs:
                check_inputs(recipe)
            print(f"ok    {f} ({recipe.stage})")
        except RecipeError as e:
            failed += 1
            print(f"FAIL  {redact_text(str(e))}")
    return 2 if failed else 0


def _launcher_in(path: str) -> dict | None:
    """The accelerate launcher config in `path` (a mapping with distributed_type and no stage), or None."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # load() says what is wrong with it
    is_launcher = isinstance(data, dict) and "distributed_type" in data and "stage" not in data
    return data if is_launcher else None


def prepare(recipe_file: str, overrides: list[str], shard: str | None) -> int:
    """Build the mixture a training stage will use, with its stage's own `prepare` (the same code and
    cache entry its `run` reads)."""
    from pipeline.core.runs import parse_shard

    recipe = load(recipe_file, overrides, libraries=True)
    build = getattr(stage_module(recipe.stage), "prepare", None)
    if build is None:
        have = [s for s in STAGES if hasattr(stage_module(s), "prepare")]
        raise RecipeError(recipe_file, [("stage", f"`prepare` builds the mixtures of {' and '.join(have)}; this "
                                                  f"recipe is `{recipe.stage}`, which has nothing to build ahead "
                                                  "of its run")])
    check_inputs(recipe)
    try:
        build(recipe, parse_shard(shard) if shard else None)
    except Exception as e:  # datasets wraps a full disk in its own error: the disk's doing is said in one line
        from pipeline.core.models import cache_dir
        from pipeline.core.runs import disk_problem

        problem = disk_problem(e, [cache_dir() / "mixtures", cache_dir(), recipe.output_path().parent])
        if problem is None:
            raise
        raise UserError(problem) from e
    return 0


def plan(args) -> int:
    """Plan every recipe; print the tables, write plan.json; exit 2 with one line per problem."""
    from pipeline.core.files import write_json_atomic
    from pipeline.planning.costs import launcher_sharding, read_gpu_check
    from pipeline.planning.plan import format_plan, plan_recipe

    if args.gpus < 1:
        raise UserError(f"--gpus {args.gpus}: give the number of GPUs the job runs on (1 or more)")
    sharding = launcher_sharding(_launcher(args.launcher, args.gpus))
    measured = read_gpu_check(args.gpu_check)
    plans, problems, against = [], [], None
    if args.against:
        try:
            against = load(args.against)
        except RecipeError as e:
            problems += _problem_lines(args.against, e)
    for path in args.recipes if not problems else []:
        try:
            recipe = load(path, args.overrides)
        except RecipeError as e:
            problems += _problem_lines(path, e)
            continue
        result = plan_recipe(recipe, gpus=args.gpus, gpu=args.gpu, against=against, sharding=sharding,
                             measured=measured, vllm_tokens_per_s=args.vllm_tokens_per_s)
        result = redact(result)  # the resolved recipe and its differences hold hub_token and the like
        print(format_plan(result) + "\n")
        plans.append(result)
        problems += [f"{path}: {p}" for p in result["problems"]]
    try:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), {"plans": plans, "problems": [redact_text(p) for p in problems]})
    except OSError as e:
        raise UserError(f"--out {args.out}: cannot write it ({e.strerror}: {e.filename}); give a path in a "
                        "writable directory") from None
    print(f"plan: {len(plans)} recipe(s) -> {args.out}")
    for problem in problems:
        print(f"error: {redact_text(problem)}", file=sys.stderr)
    return 2 if problems else 0


def _problem_lines(path: str, error: RecipeError) -> list[str]:
    return [f"{path}: {key + ': ' if key else ''}{msg}" for key, msg in error.problems]


def _launcher(choice: str | None, gpus: int) -> dict | None:
    """The accelerate config: a name under recipes/accelerate/, a file, or none (one process)."""
    import yaml

    choice = choice or ("zero3" if gpus > 1 else "none")
    if choice == "none":
        return None
    path = Path(choice) if choice.endswith(".yaml") else DEMO_RECIPES.parent / "accelerate" / f"{choice}.yaml"
    if not path.is_file():
        if choice in ("zero3", "ddp", "fsdp2"):  # installed from the wheel, without recipes/: what each one is
            return {"zero3": {"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 3}},
                    "ddp": {"distributed_type": "MULTI_GPU"}, "fsdp2": {"distributed_type": "FSDP"}}[choice]
        raise UserError(f"--launcher {choice}: no such accelerate config; use ddp, zero3, fsdp2, none or a .yaml file")
    try:
        launcher = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"--launcher {path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not _is_accelerate_config(launcher):
        raise UserError(f"--launcher {path}: not an accelerate config (a mapping with distributed_type and, for "
                        "DeepSpeed, deepspeed_config.zero_stage 0-3, as in recipes/accelerate/zero3.yaml)")
    return launcher


def _is_accelerate_config(launcher) -> bool:
    """A mapping whose deepspeed_config, if any, is a mapping with a zero_stage of 0 to 3."""
    if not isinstance(launcher, dict):
        return False
    deepspeed = launcher.get("deepspeed_config") or {}
    return isinstance(deepspeed, dict) and str(deepspeed.get("zero_stage", 0)) in ("0", "1", "2", "3")


def prepare_models(names: list[str]) -> int:
    from pipeline.core.models import EMBEDDED, resolve_model

    for name in names or list(EMBEDDED):
        print(f"embedded:{name} -> {resolve_model('embedded:' + name)}")
    return 0


def demo() -> int:
    """The whole pipeline, in order, on the embedded default (CPU); then where everything went."""
    prepare_models([])
    recipes = [DEMO_RECIPES / f"{stage}.yaml" for stage in STAGES]
    if validate([str(p) for p in recipes]) != 0:
        return 2
    for stage, path in zip(STAGES, recipes):
        run_stage(stage, str(path), overwrite=True)
    outputs = [load(p).output_path() for p in recipes]
    print("\ndemo finished. outputs:\n" + "\n".join(f"  {o}" for o in outputs))
    print(f"evaluation report: {outputs[-1] / 'report.md'}; merge sweep: {outputs[-2] / 'sweep' / 'sweep.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
