"""gunicorn entry point: ``gunicorn buddo_deploy.wsgi:app``."""

from .app import create_app

app = create_app()
