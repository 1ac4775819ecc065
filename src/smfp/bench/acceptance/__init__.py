"""The method's acceptance suites: one-state bandits with a known Q (``smfp bench bandit``)."""
