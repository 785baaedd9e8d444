"""Local stand-ins for services this machine cannot reach (test fixtures, never production)."""
