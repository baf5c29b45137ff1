"""Suite-wide settings."""

from __future__ import annotations

import os

from metrics.logging import configure_logging

# The service logs JSON at INFO in production; in the suite only warnings are worth reading.
configure_logging(os.environ.get("SWITCHMAN_TEST_LOG_LEVEL", "WARNING"))
