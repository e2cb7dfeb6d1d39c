"""One target's collection, and the supervisor that runs every target's.

`supervisor` wires the targets of a config (clients, budgets, reloads); `poller` runs one
target's cycles and builds its parts, each given the frozen `context`, the target's
`state` and a narrow protocol of the calls it makes: `discovery` (ListJobs), `eventpath`
(job events), `sweep` (ListJobExecutionsForJob); `schedule` and `shard` are pure. Imports
go down that list, and so do calls at run time.
"""
