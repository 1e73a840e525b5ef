"""Ready-made Ray Serve applications (see ``deployments/`` for their YAML configs)."""
