"""Resolution and model-scaling studies (seed 001): plan, execution, executors."""
