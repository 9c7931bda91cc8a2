"""The paper's human study: blind pairwise preference votes on base vs +NEFT answers.

Run: python -m pipeline.human invite experiment=default --label alice   (prints alice's link)
     python -m pipeline.human serve experiment=default     (annotators open their links)
     python -m pipeline.human export experiment=default    (alpaca_eval annotations)
     python -m pipeline.human report experiment=default    (win rate, kappa, judges vs humans)
"""


def human_report_section(results_dir, store=None, db_url=None):
    """REPORT.md's "Human study" markdown, or None (see pipeline.human.report_section)."""
    # Imported here so that `import pipeline.human` stays light (no Flask, no SQLAlchemy).
    from pipeline.human.report_section import human_report_section as section

    return section(results_dir, store, db_url)
