"""Pure state machines and the observation types they consume: no clock, no I/O."""
