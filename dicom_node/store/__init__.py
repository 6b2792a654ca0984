"""The job log and what is stored beside it: status queries over it."""
