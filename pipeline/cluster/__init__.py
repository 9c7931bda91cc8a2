"""Cluster-side tools: SLURM jobs sized per point and their dry run (launcher, jobs, table);
the prefetch of everything a run downloads (points, needs, fetchers, mirror)."""
