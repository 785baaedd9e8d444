"""Buddo Deploy: self-hosted container hosting."""
