"""``spark-bench coverage``: which of timm's model families SparK pre-trains, and why the others not.

Every timm module (family) whose models expose four feature levels with doubling strides qualifies;
its smallest members are built as SparK encoders, trained a step and checked against the invariants
(see :mod:`.trial`). The table goes to ``docs/coverage.md``.
"""
