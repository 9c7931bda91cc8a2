"""Cluster-side tools: SLURM jobs sized per point and their dry run (launcher, jobs, table);
the prefetch of everything a run downloads (points, needs, fetchers, mirror)."""

# The mirror fetchers register themselves with fetchers.py when imported; importing them here
# (any import of pipeline.cluster.* runs this first) keeps fetchers.py free of a cycle.
from pipeline.cluster import mirror as _mirror  # noqa: E402,F401
