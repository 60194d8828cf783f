"""The report stage: reads every run's verified outputs and renders reports/tables.md (summary, tables,
claims) and reports/figures/, beside the paper's own numbers (paper_results)."""
