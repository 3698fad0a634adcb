"""Training on a Ray cluster: the doit graph, run keys and lock stay in the workspace; each training
runs as a Ray task on a node with a free GPU (docs/rules.md §6c).

- `settings`: which cluster (`cluster:` in charfw.yaml, or CHARFW_RAY_ADDRESS);
- `wire`: a training request as plain data, its paths relative to the workspace;
- `bundle`: the files that travel with a task and the files that come back;
- `node`: what runs on a node (the task, its model cache, the state mailbox);
- `driver`: what runs in the build (connect, ship, wait, cancel, retry, write the results).

Only `driver` and `node` import ray (the `cluster` extra).
"""
