"""Process plumbing shared by every process of the project (daemon, edge, shipper,
falconctl): systemd notification (``sdnotify``), metrics set-up (``metrics``), durable
file replacement (``durable``). Every other package may import it. It imports no
other package of the project but ``shm`` (the lowest layer, which imports none): its
pid probe ``shm.names.pid_alive``, so that "is this process alive" has one
implementation."""
