"""`python -m demo SCENARIO`: watch a connection pool at work, live, in the terminal.

A tool of the repository (like `benchmarks/` and `testbed/`), never shipped by pip. It
starts a throwaway PostgreSQL (or uses ``--dsn``), runs a scenario's worker threads against
pgpool (and, with ``--pool``, against other pools side by side, on the same load) and draws
one lane per connection slot, the queue of waiting threads, counters and an event log.

Modules, in reading order:

- `scenarios`: what each scenario does (threads, query time, phases, faults);
- `workload`: the worker threads and what they record (the same for every pool);
- `adapter`: the one place that reads a pool's private state, defensively;
- `view`: turns snapshots into a rich renderable, or plain lines when piped;
- `runner` and `__main__`: the command line, the server, the loop that ties them.
"""
