"""Every page of the dashboard (the routes of its page modules)."""

from __future__ import annotations

from joblife.web import pages_jobs, pages_overview

routes = [*pages_overview.routes, *pages_jobs.routes]
