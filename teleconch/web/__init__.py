"""The proxy's web listener: JSON API and static pages."""
