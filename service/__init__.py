"""Process plumbing shared by every long-running process (daemon, edge,
shipper): systemd notification and logging set-up. Imports no other package
of the project."""
