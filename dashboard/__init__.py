"""The live dashboard: one read-only page over the platform's live state and its gold tables.

    adstream dashboard             # on DASHBOARD_PORT (`make up` starts it)

``sources`` reads (the auction service's JSON, the campaign and shared stores, the lake through delta-rs),
``views`` turns what was read into the page's sections (no I/O, no clock), ``app`` serves the page, its
chart library, and the sections as JSON and as server-sent events.
"""
