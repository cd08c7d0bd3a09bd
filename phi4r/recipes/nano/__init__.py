"""The nano model's recipe (`phi4r train nano`, docs/NANO.md).

    recipe.py      stages, configuration, evaluation, report, `ship()`
    data.py        the training conversations: the tasks' instances in the recipe's prompts and traces
    spatialmap.py  spatialmap's numbered prompt and record trace
    calendar.py    calendar's day-record sweep trace
    induction.py   the synthetic copy and recall warm-ups
    probes.py      which trace steps a model has learned (teacher-forced)
"""
