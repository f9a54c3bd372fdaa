"""The local stack's commands of `adstream`: up, down, status, airflow (passthrough) and run.

Each is defined in its module and imported when it runs (see cli.lazy).
"""

from __future__ import annotations

from cli.lazy import lazy_app

app = lazy_app(
    {
        "up": ("devstack.services", "Start the local services (a healthy one is left alone)."),
        "down": ("devstack.services", "Stop the local services."),
        "status": ("devstack.services", "Each local service's state; exit status 1 when one is not healthy."),
        "airflow": ("devstack.services", "The airflow CLI, pointed at the local instance."),
        "run": ("devstack.run", "Bring the platform up and push data through it, stage by stage (`make run`)."),
    }
)
