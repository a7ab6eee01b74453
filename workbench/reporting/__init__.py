"""Reporting: results tables, plots and the run report, written from a run's figures."""
