"""Playwright settings of the browser tests in this folder: Debian's chromium, headless, no off-machine requests."""

import re

import pytest


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    from _browser import CHROMIUM

    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True}


@pytest.fixture
def context(context):
    from _browser import slow_machine_timeouts

    # nothing leaves the machine: off-machine requests fail at once instead of hanging
    context.route(re.compile(r"^https?://(?!(127\.0\.0\.1|localhost)[:/])"), lambda r: r.abort())
    slow_machine_timeouts(context)
    return context
