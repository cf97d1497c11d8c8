"""What the loader tells the tools teams already run: Prometheus metrics (`metrics`),
OpenLineage events (`lineage`) and JSON logs (`logs`), each an observer of the same events
(`events`): a run, a marts build, a backup, a restore or a verify started and how it ended."""
