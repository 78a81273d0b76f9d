"""Evaluation like the paper's Sec. 4.3: metrics, baselines, O1-O6 tables."""
