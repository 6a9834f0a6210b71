"""The fleet: which versions of which model every serving host loads, and how
its traffic is split, stored once in PostgreSQL with a revision and its
history; a reconciler per host converges that host's daemon to it.

    fleet/state.py       a model's desired state and how each change transforms it (pure)
    fleet/plan.py        the daemon steps that converge one host, in a safe order (pure)
    fleet/store.py       the SQL: revisions, history, host reports, LISTEN/NOTIFY
    fleet/reconciler.py  the per-host loop (`falconctl reconcile`)
    fleet/heartbeat.py   the reconciler's systemd watchdog pings, bounded by its progress
    fleet/cli.py         `falconctl hosts load|unload|split|rollback|status|history|forget`
    fleet/errors.py      FleetError and its causes; the command's exit statuses (0/1/2/3/4/5)

The tables are made by audit/migrations/0007_fleet_state.sql (the one migration
sequence, audit/migrate.py). docs/several-hosts.md is the operator's page.
Imports: fleet -> audit (migrations), settings; never the edge or the daemon
(falconctl/hosts.py hands the reconciler the daemon client).
"""
