"""Process plumbing shared by every long-running process (daemon, edge,
shipper): systemd notification, metrics set-up. Imports no other package of
the project but ``shm`` (the lowest layer, which imports none): its pid probe
``shm.names.pid_alive``, so that "is this process alive" has one implementation."""
