"""Falcon resources: thin, they parse, call a service and present the result."""
