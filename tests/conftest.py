"""Shared pytest set-up: say which real data the end-to-end smoke run uses on this machine."""

from smoke_data import smoke_dataset


def pytest_report_header(config):
    return f"repro smoke run data: {smoke_dataset().description}"
