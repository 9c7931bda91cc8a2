# ruff: noqa: F821
# The lines a new per-arm stage adds to pipeline/plan.py, not the file: tests/test_worked_stage.py
# puts each block where its `# into:` line says (imports: after the last import; a NAME: as the last
# element of the tuple `NAME = (...)`).

# into: imports
from pipeline.stages import endings

# into: STEPS
Step("endings", endings, (ARM,))  # the share of answers that end a sentence
