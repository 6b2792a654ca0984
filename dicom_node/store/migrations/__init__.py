"""Alembic migrations of the job log (see :mod:`dicom_node.store.schema`)."""
