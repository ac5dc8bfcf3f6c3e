"""Pure planning: `plan(job, pods, nodes, checkpoints, now) -> actions`. No I/O, no kopf, no kubernetes."""
