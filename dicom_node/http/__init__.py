"""Operations services of a node process: the read-only HTTP status service (health,
readiness, Prometheus metrics, JSON API, a status page) and webhook notifications.

Both are optional (``[http]`` and ``[notify]`` in ``config/node.toml``) and read the
job log; neither changes it. :func:`dicom_node.http.services.start_services` starts
what the configuration asks for beside a running :class:`~dicom_node.node.Node`.
The web stack (Starlette, uvicorn, Jinja2, prometheus_client) is imported only when
``[http]`` is configured.
"""
