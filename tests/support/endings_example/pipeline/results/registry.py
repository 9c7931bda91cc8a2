# ruff: noqa: F821
# The lines a new per-arm stage's table adds to pipeline/results/registry.py, not the file (see
# the plan.py beside this one for how tests/test_worked_stage.py places them).

# into: TABLES
TableSpec(
    "endings",
    "Endings — answers that end a sentence",
    model_tables.has_stage("endings"),
    model_tables.arm_metrics(
        "endings",
        ("endings_share", "endings_n"),
        "Share of the answers (percent) that end with . ! or ?; the rest stopped mid-sentence "
        "(most often at generate.max_new_tokens).",
    ),
)
