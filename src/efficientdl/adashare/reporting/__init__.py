"""What an AdaShare run reports: the results tables and report over AdaShare and its baselines,
and the policy pictures."""
