"""Benchmarks: where the time goes, as ratios against a baseline run in the same process.

``electric bench engine|pll|service|startup`` runs one; each prints a Markdown table and can
write its figures as JSON for ``electric bench plot``. None of this runs in the test suite.
"""
