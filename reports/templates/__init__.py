"""Jinja2 templates for `repro report`, shipped in the wheel as the package `repro.templates`."""
