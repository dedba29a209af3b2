"""The operator dashboard, ``joblife web``: a server-rendered web interface (Starlette,
Jinja2, htmx, Chart.js; every asset ships in the package) over the job database, for
watching production and steering it through the operator procedures."""
