"""smolalign's pipeline: the foundation every stage stands on, the data path, generation, the training
stages, planning, and the `smolalign` command. Read it from the bottom up; each room imports only
the rooms below it (tests/test_layout.py holds the direction):

    core/          recipes, the stage registry, runs and manifests, the chat format, models   (imports no room)
    data/          sources, rows, the training mixture, packing                                 core/
    generation.py  generation backends shared by synth/, merge/ and eval/                       core/
    training/      midtrain, sft, apo and what they share                                       core/, data/
    planning/      `smolalign plan`: differences, data, costs                                   core/, data/, training/
    cli.py         `smolalign STAGE --recipe R`                                                 any room

The stage packages beside it (synth/, merge/, eval/) stand on core/, data/ and generation.py; no
module of pipeline/ imports them: the registry (core/stages.py) names them as module paths.
"""
