"""Reporting: aggregate metrics records, compare with published numbers, and render tables and figures."""
