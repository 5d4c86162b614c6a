"""The sampling engine: knobs, sampler stages, step records, the step-wise generator, model loading."""
